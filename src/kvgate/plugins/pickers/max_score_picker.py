"""``max-score-picker``: the highest total score wins; ties are broken at random.

* Parameters: ``maxNumOfEndpoints`` (int, default 1; values <= 0 mean 1) — how many targets
  to return, best first (the gateway uses the first; Envoy may fall back to the others).
* Formula: shuffle the candidates with the context RNG, then stable-sort by total score
  descending and take the first ``maxNumOfEndpoints``. Equal scores therefore end up in a
  uniformly random order.
* Inputs: the weighted totals computed by the framework. State: none.

With one target (the common case) the shuffle is replaced by a uniform choice among the
top-scored candidates, which has the same distribution and costs one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, ProfileRunResult, RandomSource, Request
from kvgate.scheduling.types import ScoredEndpoint as Scored

TYPE = "max-score-picker"


def max_endpoints(params: Params) -> int:
    """llm-d's ``maxNumOfEndpoints`` (shared by the pickers): default 1, <= 0 means 1."""
    value = params.get_int("maxNumOfEndpoints", 1)
    return value if value > 0 else 1


class MaxScorePicker:
    """Picks the ``max_num_endpoints`` best-scored candidates, random among equals."""

    type_name = TYPE

    def __init__(self, name: str, rng: RandomSource, max_num_endpoints: int = 1) -> None:
        self.name = name
        self.max_num_endpoints = max_num_endpoints
        self._rng = rng

    def pick(
        self, state: CycleState, request: Request, scored: Sequence[Scored]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(())
        if self.max_num_endpoints == 1:
            best = max(s.score for s in scored)
            top = [s for s in scored if s.score == best]
            chosen = top[0] if len(top) == 1 else top[self._rng.randrange(len(top))]
            return ProfileRunResult((chosen.endpoint,))
        shuffled = list(scored)
        self._rng.shuffle(shuffled)
        shuffled.sort(key=lambda s: s.score, reverse=True)  # list.sort is stable
        return ProfileRunResult(tuple(s.endpoint for s in shuffled[: self.max_num_endpoints]))


def create(name: str, params: Params, ctx: PluginContext) -> MaxScorePicker:
    return MaxScorePicker(name, ctx.rng, max_endpoints(params))
