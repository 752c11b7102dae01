"""``queue-scorer``: prefer endpoints with shorter waiting queues.

* Parameters: none.
* Formula: ``(maxQ − q) / (maxQ − minQ)`` with ``q`` = waiting queue size and min/max over the
  candidates; every candidate scores 1 when all queues are equal.
* Inputs: ``Metrics.waiting_queue_size`` (``vllm:num_requests_waiting``). State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers._minmax import inverse_min_max
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "queue-scorer"


class QueueScorer:
    """Min-max score on the waiting queue (shortest queue → 1)."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return inverse_min_max(
            [e.name for e in endpoints], [e.metrics.waiting_queue_size for e in endpoints]
        )


def create(name: str, params: Params, ctx: PluginContext) -> QueueScorer:
    return QueueScorer(name)
