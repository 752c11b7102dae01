"""``round-robin-picker`` (kvgate's own; not in llm-d): cycle through candidates by name.

Used by the built-in ``round-robin`` policy as a load-oblivious baseline.

* Parameters: ``maxNumOfEndpoints`` (int, default 1; <= 0 means 1).
* Formula: sort the candidates by name; the n-th pick of this plugin takes the candidate at
  position ``n mod len(candidates)`` (and the ones after it when more targets are asked for).
  Scores are ignored.
* Inputs: candidate names. State: one counter per plugin instance (not per request).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.pickers.max_score_picker import max_endpoints
from kvgate.scheduling.types import CycleState, ProfileRunResult, Request, ScoredEndpoint

TYPE = "round-robin-picker"


class RoundRobinPicker:
    """Cycles over the candidates in name order."""

    type_name = TYPE

    def __init__(self, name: str, max_num_endpoints: int = 1) -> None:
        self.name = name
        self.max_num_endpoints = max_num_endpoints
        self._next = 0

    def pick(
        self, state: CycleState, request: Request, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(())
        ordered = sorted((s.endpoint for s in scored), key=lambda e: e.name)
        n = len(ordered)
        start = self._next % n
        self._next = start + 1
        count = min(self.max_num_endpoints, n)
        return ProfileRunResult(tuple(ordered[(start + i) % n] for i in range(count)))


def create(name: str, params: Params, ctx: PluginContext) -> RoundRobinPicker:
    return RoundRobinPicker(name, max_endpoints(params))
