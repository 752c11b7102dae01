"""prefix-cache-affinity-filter: threshold, exploration, the TTFT load gate, parameters."""

from __future__ import annotations

import random

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, Request
from plugins.kit import ctx, endpoint, make, request

TYPE = "prefix-cache-affinity-filter"
A, B, C = endpoint("a"), endpoint("b"), endpoint("c")
PREFIX = DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer")
LOAD = DataKey(data.IN_FLIGHT_LOAD, "inflight-load-producer")


def _req(ratios: dict[str, float], tokens: dict[str, int] | None = None) -> Request:
    req = request()
    data.put(req, PREFIX, {n: PrefixCacheMatchInfo(r * 10, 10, 64, int(r * 10))
                           for n, r in ratios.items()})  # fmt: skip
    data.put(req, LOAD, {n: InFlightLoad(1, t) for n, t in (tokens or {}).items()})
    return req


def _names(plugin: object, req: Request) -> list[str]:
    return [e.name for e in plugin.filter(CycleState(), req, [A, B, C])]  # type: ignore[attr-defined]


def test_keeps_sticky_endpoints_else_all() -> None:
    f = make(TYPE)
    assert _names(f, _req({"a": 0.9, "b": 0.8, "c": 0.5})) == ["a", "b"]
    assert _names(f, _req({"a": 0.5})) == ["a", "b", "c"]  # nobody sticky: no-op
    assert _names(f, request()) == ["a", "b", "c"]  # no producer output: no-op
    assert _names(make(TYPE, {"affinityThreshold": 0}), _req({"a": 1.0})) == ["a", "b", "c"]


def test_ttft_gate_breaks_stickiness_when_sticky_endpoints_are_slow() -> None:
    f = make(TYPE, {"maxTTFTPenaltyMs": 1000, "peakPrefillThroughput": 1000})
    # best sticky a: 2000 tokens = 2000 ms; best other: 500 ms; penalty 1500 > 1000
    assert _names(f, _req({"a": 1.0}, {"a": 2000, "b": 500, "c": 500})) == ["a", "b", "c"]
    assert _names(f, _req({"a": 1.0}, {"a": 1400, "b": 500, "c": 500})) == ["a"]
    assert make(TYPE, {"maxTTFTPenaltyMs": 0}).consumes() == (PREFIX,)
    assert make(TYPE).consumes() == (PREFIX, LOAD)


def test_in_flight_tokens_gate_breaks_stickiness_when_sticky_endpoints_are_loaded() -> None:
    # the optimized-baseline guide's shape: the TTFT gate off, the tokens gate on
    f = make(TYPE, {"maxTTFTPenaltyMs": 0, "maxTokensInFlightPenalty": 1000})
    assert f.consumes() == (PREFIX, LOAD)
    # least-loaded sticky a: 1600 tokens over the least-loaded other (b, 500): 1100 > 1000
    assert _names(f, _req({"a": 1.0}, {"a": 1600, "b": 500, "c": 900})) == ["a", "b", "c"]
    assert _names(f, _req({"a": 1.0}, {"a": 1500, "b": 500, "c": 900})) == ["a"]
    assert _names(f, _req({"a": 1.0, "b": 1.0}, {"a": 9000, "b": 600})) == ["a", "b"]


def test_exploration_uses_the_context_rng() -> None:
    c = ctx()
    c.rng = random.Random(1)
    f = make(TYPE, {"explorationProbability": 1.0}, c=c)
    assert _names(f, _req({"a": 1.0})) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"affinityThreshold": 1.5}, "affinityThreshold"),
        ({"maxTokensInFlightPenalty": -1}, "maxTokensInFlightPenalty"),
        ({"explorationProbability": 2}, "explorationProbability"),
        ({"ttftSource": "guess"}, "ttftSource"),
        ({"peakPrefillThroughput": 0}, "peakPrefillThroughput"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, params)
    assert err.value.field == field
    make(TYPE, {"ttftSource": "latencyPredictor", "maxTTFTPenaltyMs": 0})  # gate off: fine


def test_latency_predictor_source_gates_on_predicted_ttft() -> None:
    from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo

    f = make(TYPE, {"ttftSource": "latencyPredictor", "maxTTFTPenaltyMs": 100})
    key = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
    assert f.consumes() == (PREFIX, key)
    load = EndpointLoad(0, 0, 0, 0, 0, 0, 0.0)

    def predicted(ttft: dict[str, float]) -> Request:
        req = _req({"a": 0.9})
        data.put(req, key, {n: LatencyPredictionInfo(t, 0, -t, 0, True, True, 0, load)
                            for n, t in ttft.items()})  # fmt: skip
        return req

    assert _names(f, predicted({"a": 150, "b": 100, "c": 60})) == ["a"]  # 90 ms worse: stick
    assert _names(f, predicted({"a": 300, "b": 100, "c": 60})) == ["a", "b", "c"]  # 240: open
    assert _names(f, _req({"a": 0.9})) == ["a"]  # no predictions yet: the gate is skipped
