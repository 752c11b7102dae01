"""``lora-affinity-scorer``: prefer endpoints that already hold the requested LoRA adapter.

* Parameters: none.
* Formula, for the request's target model (``Request.effective_model``):
  1.0 if it is among the endpoint's running adapters; else 0.8 if the endpoint has room to
  load another (``|running| + |waiting| < max_lora``); else 0.6 if it is already waiting to
  be loaded there; else 0.
* Inputs: ``Metrics.active_models``, ``waiting_models``, ``max_active_models``
  (``vllm:lora_requests_info``). State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "lora-affinity-scorer"


class LoraAffinityScorer:
    """Scores 1 / 0.8 / 0.6 / 0 by adapter residency and free adapter slots."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        model = request.effective_model
        out: dict[str, float] = {}
        for e in endpoints:
            m = e.metrics
            if model in m.active_models:
                out[e.name] = 1.0
            elif len(m.active_models) + len(m.waiting_models) < m.max_active_models:
                out[e.name] = 0.8
            elif model in m.waiting_models:
                out[e.name] = 0.6
            else:
                out[e.name] = 0.0
        return out


def create(name: str, params: Params, ctx: PluginContext) -> LoraAffinityScorer:
    return LoraAffinityScorer(name)
