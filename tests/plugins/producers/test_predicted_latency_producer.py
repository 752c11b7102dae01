"""predicted-latency-producer: features per candidate, SLO headroom, training, fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvgate.errors import PluginParameterError
from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo, TokenizedPrompt
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    ResponseInfo,
    SchedulingResult,
)
from plugins.kit import endpoint, make, request

TYPE = "predicted-latency-producer"
KEY = DataKey(LATENCY_PREDICTION_INFO, TYPE)
A = endpoint("a", waiting_queue_size=2, running_requests_size=5, kv_cache_usage_percent=0.5)
B = endpoint("b", {"role": "prefill"})


@dataclass
class Finished:
    """A finished request as RequestControl hands it to on_finish observers."""

    request: Request | None
    endpoint: Endpoint | None
    attempts: int = 1
    status: int = 200
    error: str | None = None
    stream: bool = True
    ttft_s: float | None = 0.100
    queue_wait_s: float | None = 0.020
    duration_s: float | None = 1.100
    completion_tokens: int | None = 51


def _request(tokens: int = 1000, headers: dict[str, str] | None = None, rid: str = "r1") -> Request:
    req = request(headers=headers, request_id=rid)
    data.put_tokenized(req, DataKey(data.TOKENIZED_PROMPT, "token-producer"),
                       TokenizedPrompt(tuple(range(tokens)), estimated=True))  # fmt: skip
    data.put(req, DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
             {"a": PrefixCacheMatchInfo(10, 62, 16, 10)})  # fmt: skip
    data.put(req, DataKey(data.IN_FLIGHT_LOAD, "inflight-load-producer"),
             {"a": InFlightLoad(3, 900), "b": InFlightLoad(0, 0)})  # fmt: skip
    return req


def _infos(p: object, req: Request) -> dict[str, LatencyPredictionInfo]:
    p.produce(CycleState(), req, [A, B])  # type: ignore[attr-defined]
    return dict(data.per_endpoint(req, KEY, LatencyPredictionInfo) or {})


def test_features_come_from_the_producers_it_consumes_and_the_metrics() -> None:
    p = make(TYPE)
    loads = p.loads(_request(), [A, B])
    assert loads["a"] == EndpointLoad(1000, 160, 3, 900, 2, 5, 0.5)
    assert loads["b"] == EndpointLoad(1000, 0, 0, 0, 0, 0, 0.0)
    assert set(p.consumes()) == {
        DataKey(data.TOKENIZED_PROMPT, "token-producer"),
        DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
        DataKey(data.IN_FLIGHT_LOAD, "inflight-load-producer"),
    }


def test_nothing_is_published_until_min_samples_then_training_makes_it_ready() -> None:
    p = make(TYPE, {"streamingMode": True, "minSamples": 3})
    for i in range(3):
        req = _request(rid=f"r{i}")
        assert _infos(p, req) == {}  # too few samples: consumers fall back
        p.request_finished(Finished(req, A))
    assert p.trained == 3 and p.predictor.ready
    assert set(_infos(p, _request())) == {"a", "b"}


def test_training_targets_exclude_queue_wait_and_divide_by_tokens_after_the_first() -> None:
    p = make(TYPE, {"streamingMode": True})
    req = _request()
    p.produce(CycleState(), req, [A, B])
    load, ttft_ms, tpot_ms = p.observation(Finished(req, A))
    assert load == p.loads(req, [A])["a"]
    assert ttft_ms == pytest.approx(80.0)  # 100 ms to first byte - 20 ms queued
    assert tpot_ms == pytest.approx(20.0)  # (1100 - 100) ms / 50 tokens
    # e2e mode (llm-d's default): TTFT is trained on the whole latency, no TPOT
    e2e = make(TYPE)
    e2e.produce(CycleState(), req, [A, B])
    assert e2e.observation(Finished(req, A))[1:] == (pytest.approx(1080.0), None)


@pytest.mark.parametrize(
    "change",
    [
        {"error": "upstream_5xx"},
        {"status": 503},
        {"attempts": 2},  # a retry: the features were the first endpoint's
        {"stream": False},  # streamingMode true trains on streams only
        {"duration_s": 400.0},  # longer than contextTTL (5m)
    ],
)
def test_requests_it_cannot_learn_from_are_skipped(change: dict[str, object]) -> None:
    p = make(TYPE, {"streamingMode": True})
    req = _request()
    p.produce(CycleState(), req, [A, B])
    finished = Finished(req, A)
    for key, value in change.items():
        setattr(finished, key, value)
    p.request_finished(finished)
    assert (p.trained, p.skipped) == (0, 1)


def test_headroom_against_slo_headers_and_running_requests_tpot_slo() -> None:
    p = make(TYPE, {"streamingMode": True, "latencyProfile": "qwen3-0.6b-h100",
                    "endpointRoleLabel": "role"})  # fmt: skip
    slow = _request(headers={"x-slo-ttft-ms": "1", "x-slo-tpot-ms": "500"}, rid="slow")
    infos = _infos(p, slow)
    a = infos["a"]
    assert a.ttft_headroom_ms == pytest.approx(1.0 - a.ttft_ms)
    assert not a.ttft_valid and a.tpot_valid and not a.valid
    assert infos["b"].tpot_headroom_ms == 0.0 and infos["b"].tpot_valid  # prefill: neutral
    # a running request on a with a 1 ms TPOT SLO caps a new request's TPOT SLO there
    strict = _request(headers={"x-slo-tpot-ms": "1"}, rid="strict")
    _infos(p, strict)
    p.pre_request(strict, SchedulingResult({"d": ProfileRunResult((A,))}, "d"), {})
    again = _infos(p, _request(headers={"x-slo-tpot-ms": "500"}, rid="next"))["a"]
    assert again.tpot_headroom_ms == pytest.approx(1.0 - again.tpot_ms)
    assert not again.tpot_valid
    p.response_complete(strict, ResponseInfo(status=200), A)
    assert _infos(p, _request(headers={"x-slo-tpot-ms": "500"}, rid="n2"))["a"].tpot_valid


def test_no_slo_means_headroom_is_minus_the_prediction_and_slo_counts_as_met() -> None:
    p = make(TYPE, {"latencyProfile": "qwen3-0.6b-h100"})
    info = _infos(p, _request(headers={"x-slo-ttft-ms": "fast"}))["a"]  # not a number: none
    assert info.ttft_headroom_ms == -info.ttft_ms and info.valid


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"samplingMean": 200}, "samplingMean"),
        ({"maxDecodeTokenSamplesForPrediction": 4}, "maxDecodeTokenSamplesForPrediction"),
        ({"sloBufferFactor": 0}, "sloBufferFactor"),
        ({"latencyProfile": "nope"}, "latencyProfile"),
        ({"contextTTL": "soon"}, "contextTTL"),
    ],
)
def test_parameters_kvgate_cannot_act_on_are_refused(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, params)
    assert err.value.field == field
