"""``weighted-random-picker``: random targets with probability proportional to score.

* Parameters: ``maxNumOfEndpoints`` (int, default 1; <= 0 means 1).
* Formula: weighted sampling without replacement by A-Res (Efraimidis–Spirakis): each
  candidate draws ``U ~ Uniform(0, 1)`` and gets the key ``U ** (1 / score)``; a score <= 0
  gets key 0. The ``maxNumOfEndpoints`` largest keys win. When every score is <= 0 the pick
  is uniformly random (as ``random-picker``).
* Inputs: the weighted totals computed by the framework. State: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.pickers.max_score_picker import max_endpoints
from kvgate.scheduling.types import (
    CycleState,
    ProfileRunResult,
    RandomSource,
    Request,
    ScoredEndpoint,
)

TYPE = "weighted-random-picker"


class WeightedRandomPicker:
    """A-Res weighted random sampling over the total scores."""

    type_name = TYPE

    def __init__(self, name: str, rng: RandomSource, max_num_endpoints: int = 1) -> None:
        self.name = name
        self.max_num_endpoints = max_num_endpoints
        self._rng = rng

    def pick(
        self, state: CycleState, request: Request, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(())
        k = self.max_num_endpoints
        if all(s.score <= 0.0 for s in scored):
            shuffled = list(scored)
            self._rng.shuffle(shuffled)
            return ProfileRunResult(tuple(s.endpoint for s in shuffled[:k]))
        rand = self._rng.random
        keyed = [(rand() ** (1.0 / s.score) if s.score > 0.0 else 0.0, s) for s in scored]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return ProfileRunResult(tuple(s.endpoint for _, s in keyed[:k]))


def create(name: str, params: Params, ctx: PluginContext) -> WeightedRandomPicker:
    return WeightedRandomPicker(name, ctx.rng, max_endpoints(params))
