"""``random-picker``: uniform random targets, ignoring scores.

* Parameters: ``maxNumOfEndpoints`` (int, default 1; <= 0 means 1).
* Formula: shuffle the candidates with the context RNG and take the first
  ``maxNumOfEndpoints``.
* Inputs: the candidate list only. State: none.
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

TYPE = "random-picker"


class RandomPicker:
    """Uniformly random targets."""

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
        if self.max_num_endpoints == 1:
            return ProfileRunResult((scored[self._rng.randrange(len(scored))].endpoint,))
        shuffled = list(scored)
        self._rng.shuffle(shuffled)
        return ProfileRunResult(tuple(s.endpoint for s in shuffled[: self.max_num_endpoints]))


def create(name: str, params: Params, ctx: PluginContext) -> RandomPicker:
    return RandomPicker(name, ctx.rng, max_endpoints(params))
