"""latency-slo-admitter: sheds only sheddable requests with SLOs nobody can meet."""

from __future__ import annotations

import pytest

from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo
from kvgate.plugins.admitters.latency_slo_admitter import AdmissionRejected
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState, Request
from plugins.kit import endpoint, make, request

TYPE = "latency-slo-admitter"
KEY = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
BUSY = [endpoint(n, running_requests_size=4, kv_cache_usage_percent=0.5) for n in ("a", "b")]
LOAD = EndpointLoad(0, 0, 0, 0, 0, 0, 0.0)
SLO = {"x-slo-ttft-ms": "100"}


def _req(priority: int, headers: dict[str, str] | None, valid: bool | None) -> Request:
    req = request(headers=headers)
    req.objective_priority = priority
    if valid is not None:
        data.put(req, KEY, {e.name: LatencyPredictionInfo(1, 1, 0, 0, valid, True, 4, LOAD)
                            for e in BUSY})  # fmt: skip
    return req


def test_sheds_a_sheddable_request_no_endpoint_can_serve_in_time() -> None:
    admitter = make(TYPE)
    with pytest.raises(AdmissionRejected, match="request cannot be admitted") as err:
        admitter.produce(CycleState(), _req(-1, SLO, valid=False), BUSY)
    assert err.value.status == 500 and admitter.rejected == 1


@pytest.mark.parametrize(
    ("priority", "headers", "valid"),
    [
        (0, SLO, False),  # not sheddable
        (-1, None, False),  # no SLO
        (-1, SLO, None),  # no predictions: fail open
        (-1, SLO, True),  # somebody meets it
    ],
)
def test_admits_everything_else(priority: int, headers: dict[str, str] | None,
                                valid: bool | None) -> None:  # fmt: skip
    assert make(TYPE).admits(_req(priority, headers, valid), BUSY)


def test_an_idle_or_cold_endpoint_admits() -> None:
    req = _req(-1, SLO, valid=False)
    idle = [BUSY[0], endpoint("b", running_requests_size=0, kv_cache_usage_percent=0.5)]
    cold = [BUSY[0], endpoint("b", running_requests_size=3, kv_cache_usage_percent=0.01)]
    assert make(TYPE).admits(req, idle) and make(TYPE).admits(req, cold)
