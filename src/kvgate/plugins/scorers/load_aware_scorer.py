"""``load-aware-scorer`` (llm-d): penalise waiting queues up to a threshold.

* Parameters: ``threshold`` (int > 0, default 128): the queue length that scores 0.
* Formula: ``0.5`` when the waiting queue is empty, else ``0.5 · (1 − min(q, T) / T)``.
  An idle endpoint therefore never scores above 0.5 (llm-d's choice, kept for equal weights).
* Inputs: ``Metrics.waiting_queue_size``. State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "load-aware-scorer"


class LoadAwareScorer:
    """``0.5 · (1 − min(q, T) / T)``."""

    type_name = TYPE

    def __init__(self, name: str, threshold: int = 128) -> None:
        self.name = name
        self.threshold = threshold

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        t = self.threshold
        return {e.name: 0.5 * (1.0 - min(e.metrics.waiting_queue_size, t) / t) for e in endpoints}


def create(name: str, params: Params, ctx: PluginContext) -> LoadAwareScorer:
    return LoadAwareScorer(name, params.get_int("threshold", 128, minimum=1))
