"""``running-requests-size-scorer``: prefer endpoints running fewer requests.

* Parameters: none.
* Formula: ``(maxR − r) / (maxR − minR)`` with ``r`` = running requests and min/max over the
  candidates; every candidate scores 1 when all are equal.
* Inputs: ``Metrics.running_requests_size`` (``vllm:num_requests_running``). State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers._minmax import inverse_min_max
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "running-requests-size-scorer"


class RunningRequestsSizeScorer:
    """Min-max score on running requests (fewest → 1)."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return inverse_min_max(
            [e.name for e in endpoints], [e.metrics.running_requests_size for e in endpoints]
        )


def create(name: str, params: Params, ctx: PluginContext) -> RunningRequestsSizeScorer:
    return RunningRequestsSizeScorer(name)
