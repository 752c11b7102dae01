"""slo-headroom-tier-filter: the meeting tier, epsilon exploration, no-ops."""

from __future__ import annotations

from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState
from plugins.kit import endpoint, make, request

TYPE = "slo-headroom-tier-filter"
KEY = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
EPS = [endpoint("a"), endpoint("b")]
LOAD = EndpointLoad(0, 0, 0, 0, 0, 0, 0.0)


def _names(f: object, headers: dict[str, str] | None, valid: dict[str, bool] | None) -> list[str]:
    req = request(headers=headers)
    if valid is not None:
        data.put(req, KEY, {n: LatencyPredictionInfo(1, 1, 0, 0, v, True, 1, LOAD)
                            for n, v in valid.items()})  # fmt: skip
    return [e.name for e in f.filter(CycleState(), req, EPS)]  # type: ignore[attr-defined]


def test_keeps_the_meeting_tier_and_explores_the_other_with_epsilon() -> None:
    slo = {"x-slo-ttft-ms": "100"}
    assert _names(make(TYPE), slo, {"a": True, "b": False}) == ["a"]
    assert _names(make(TYPE, {"epsilonExploreNeg": 1.0}), slo, {"a": True, "b": False}) == ["b"]
    assert _names(make(TYPE), slo, {"a": False, "b": False}) == ["a", "b"]  # one tier
    assert _names(make(TYPE), slo, None) == ["a", "b"]  # no predictions
    assert _names(make(TYPE), None, {"a": True, "b": False}) == ["a", "b"]  # no SLO
