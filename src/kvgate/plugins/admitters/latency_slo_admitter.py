"""``latency-slo-admitter``: refuse sheddable requests that no endpoint can serve within SLO.

* Behaviour (llm-d's): a request is sheddable when its InferenceObjective's priority is
  negative (``x-gateway-inference-objective``). One that has an SLO header
  (``x-slo-ttft-ms`` / ``x-slo-tpot-ms``) is refused when predictions exist and no candidate
  meets its SLOs, none is idle (``vllm:num_requests_running`` 0) and none is cold (KV-cache
  utilization below 2 %, where predictions are least reliable). Everything else is admitted
  and routed (the latency scorer then sends it to the least bad endpoint).
* Answer: as llm-d's director answers a refused admission: HTTP 500, ``request cannot be
  admitted`` (kvgate adds OpenAI's error ``code`` ``admission_rejected``).
* Where it runs: llm-d has an admission extension point between data preparation and
  scheduling; kvgate runs this plugin as the last data-preparation step (it consumes the
  predictions, so it is ordered after their producer), the same place in the request's path.
* Parameters: none. Inputs: ``LatencyPredictionInfo`` (``predicted-latency-producer``, added
  when not configured).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.errors import SchedulingError
from kvgate.latency import LATENCY_PREDICTION_INFO, LatencyPredictionInfo, parse_slo
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.predicted_latency_producer import TYPE as PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "latency-slo-admitter"

#: KV-cache utilization below which an endpoint counts as cold (llm-d's 2 %).
COLD_KV_USAGE = 0.02


class AdmissionRejected(SchedulingError):
    """An admitter refused the request (llm-d: ``Internal``, HTTP 500)."""

    status = 500
    reason = "admission_rejected"
    code = "admission_rejected"


class LatencySLOAdmitter:
    """A data producer that produces nothing and raises :class:`AdmissionRejected`."""

    type_name = TYPE

    def __init__(self, name: str, producer: str = PRODUCER) -> None:
        self.name = name
        self.key = DataKey(LATENCY_PREDICTION_INFO, producer)
        self.rejected = 0

    def produces(self) -> tuple[DataKey, ...]:
        return ()

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def admits(self, request: Request, endpoints: Sequence[Endpoint]) -> bool:
        """True unless the request must be shed (see the module docstring)."""
        if request.objective_priority >= 0 or not parse_slo(request.headers).any:
            return True
        infos = data.per_endpoint(request, self.key, LatencyPredictionInfo)
        if not infos:
            return True  # no predictions: fail open, as llm-d
        for e in endpoints:
            m = e.metrics
            if m.kv_cache_usage_percent < COLD_KV_USAGE or m.running_requests_size == 0:
                return True
            info = infos.get(e.name)
            if info is not None and info.valid:
                return True
        return False

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        if not self.admits(request, endpoints):
            self.rejected += 1
            raise AdmissionRejected("request cannot be admitted")


def create(name: str, params: Params, ctx: PluginContext) -> LatencySLOAdmitter:
    return LatencySLOAdmitter(name)
