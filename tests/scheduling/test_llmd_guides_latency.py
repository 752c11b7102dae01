"""llm-d's predicted-latency guide configs, scheduled by kvgate against llm-d-router's
documented semantics (see test_llmd_guides.py).

* predicted-latency: loose prefix-cache-affinity-filter (0.8, TTFT gate of 5000 ms on
  predicted TTFTs), latency-scorer (ttft 0.8, tpot 0.2, least), weighted-random-picker.
* predicted-latency-slo: strict (0.99) affinity, slo-headroom-tier-filter, loose affinity,
  latency-scorer, weighted-random-picker (streamingMode: TPOT is predicted too).
* predicted-latency-pd: P/D; prefill = prefill-filter, loose affinity, latency-scorer on
  TTFT only; decode = decode-filter, latency-scorer on TPOT only.

Until the predictor has its 20 samples nothing is predicted: the affinity gate is skipped and
latency-scorer falls back to ``round(100 · (free KV + (maxQ − q)/maxQ + prefix ratio)/3)/100``.
Once trained, the tests read the predictions published for the request and check the
filters and scores against them: headroom ``SLO − predicted`` (``0 − predicted`` without an
SLO), each dimension's ``|headroom|`` min-max normalised (0.5 when flat, a flat dimension's
weight moving to the other), blended by the weights, and the integer weight
``int(100 · x) + 1`` out of 100 with ``x = 1 − blend`` ("least", closest to the SLO first).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo
from kvgate.plugins.producers.predicted_latency_producer import PredictedLatencyProducer
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import CycleState, Endpoint, Request, SchedulingResult
from scheduling.guide_kit import PROMPT, dispatch, endpoint, guide_scheduler, scores

KEY = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
SLO = {"x-slo-ttft-ms": "1000", "x-slo-tpot-ms": "50"}


def _train(sched: Scheduler) -> None:
    """20+ observations of TTFT = 20 ms + 50 ms per 1000 tokens in flight + 2 ms per waiting
    request, TPOT = 5 ms + 1 ms per request in flight."""
    producer = next(p for p in sched.plugins if isinstance(p, PredictedLatencyProducer))
    rng = random.Random(1)
    for _ in range(40):
        tokens, waiting, requests = rng.randrange(400_000), rng.randrange(8), rng.randrange(4)
        load = EndpointLoad(rng.randrange(100, 2000), 0, requests, tokens, waiting, 0, 0.1)
        producer.predictor.observe(load, 20 + 0.05 * tokens + 2 * waiting, 5 + requests)
    assert producer.predictor.ready


def _pool(**roles: str) -> list[Endpoint]:
    # e2 has 4 requests waiting: slower than e1 by the model above
    return [endpoint("e0", 0, gpu_blocks=100_000, role=roles.get("e0")),
            endpoint("e1", 1, role=roles.get("e1")),
            endpoint("e2", 2, queue=4, role=roles.get("e2"))]  # fmt: skip


def _load_e0(sched: Scheduler, eps: list[Endpoint], profiles: Sequence[str]) -> None:
    """e0 serves PROMPT (so it is sticky for it) and 300,000 tokens more."""
    for request in (Request("r1", "m", prompt=PROMPT), Request("big", "m", prompt="x" * 1_200_000)):
        sched.schedule(request, eps)
        dispatch(sched, request, dict.fromkeys(profiles, eps[0]), profiles[0])


def _least(infos: Mapping[str, LatencyPredictionInfo], names: Sequence[str], w_ttft: float,
           w_tpot: float) -> dict[str, float]:  # fmt: skip
    """llm-d's "least" scores of one group (see the module docstring)."""
    ttft = {n: abs(infos[n].ttft_headroom_ms) for n in names}
    tpot = {n: abs(infos[n].tpot_headroom_ms) for n in names}
    t_lo, t_span = min(ttft.values()), max(ttft.values()) - min(ttft.values())
    p_lo, p_span = min(tpot.values()), max(tpot.values()) - min(tpot.values())
    a, b = w_ttft / (w_ttft + w_tpot), w_tpot / (w_ttft + w_tpot)
    if t_span <= 1e-9 < p_span:
        a, b = 0.0, 1.0
    elif p_span <= 1e-9 < t_span:
        a, b = 1.0, 0.0
    out = {}
    for n in names:
        n_t = (ttft[n] - t_lo) / t_span if t_span > 1e-9 else 0.5
        n_p = (tpot[n] - p_lo) / p_span if p_span > 1e-9 else 0.5
        out[n] = min(1.0, (int((1 - (a * n_t + b * n_p)) * 100) + 1) / 100)
    return out


def _weighted_random_shares(
    sched: Scheduler, request: Request, result: SchedulingResult, profile: str
) -> dict[str, float]:
    """How often the profile's picker picks each survivor over 4000 draws."""
    run = result.profile_results[profile]
    assert run is not None
    picker = sched.profiles[profile].picker
    counts = dict.fromkeys((s.endpoint.name for s in run.scored), 0)
    for _ in range(4000):
        counts[picker.pick(CycleState(), request, run.scored).targets[0].name] += 1
    return {n: c / 4000 for n, c in counts.items()}


def test_predicted_latency() -> None:
    sched = guide_scheduler("predicted-latency-routing_router_predicted-latency")
    eps = [endpoint("e0", 0, queue=0, kv=0.5), endpoint("e1", 1, queue=4, kv=0.2),
           endpoint("e2", 2, queue=8, kv=0.1)]  # fmt: skip
    r1 = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(r1, eps)
    # untrained: composite fallback (free KV + (8 − q)/8 + prefix 0)/3, in hundredths
    assert scores(result) == {"e0": {"latency-scorer": 0.5}, "e1": {"latency-scorer": 0.43},
                              "e2": {"latency-scorer": 0.3}}  # fmt: skip
    # weighted-random-picker: probability proportional to the score
    shares = _weighted_random_shares(sched, r1, result, "default")
    assert shares == pytest.approx({"e0": 0.5 / 1.23, "e1": 0.43 / 1.23, "e2": 0.3 / 1.23},
                                   abs=0.03)  # fmt: skip
    dispatch(sched, r1, {"default": eps[0]}, "default")
    result = sched.schedule(Request("r2", "m", prompt=PROMPT + " Again!!"), eps)
    assert list(scores(result)) == ["e0"]  # sticky; no predictions, so no TTFT gate yet
    assert scores(result)["e0"]["latency-scorer"] == round((0.5 + 1 + 1) / 3, 2)

    _train(sched)
    eps = _pool()
    _load_e0(sched, eps, ["default"])
    request = Request("r3", "m", prompt=PROMPT + " Third!!")
    result = sched.schedule(request, eps)
    infos = data.per_endpoint(request, KEY, LatencyPredictionInfo)
    assert infos is not None
    # e0 is sticky but predicted > 5000 ms slower than the best other: all kept
    assert infos["e0"].ttft_ms - min(infos["e1"].ttft_ms, infos["e2"].ttft_ms) > 5000
    # no SLO: idle endpoints (nothing dispatched) first; e0 has requests in flight
    assert infos["e0"].dispatched_requests > 0
    idle = _least(infos, ["e1", "e2"], 0.8, 0.2)
    assert infos["e1"].ttft_ms < infos["e2"].ttft_ms and idle["e1"] == 1.0
    assert scores(result) == {"e0": {"latency-scorer": 0.0}, "e1": {"latency-scorer": 1.0},
                              "e2": {"latency-scorer": idle["e2"]}}  # fmt: skip


def test_predicted_latency_slo() -> None:
    sched = guide_scheduler("predicted-latency-routing_router_predicted-latency-slo")
    _train(sched)
    eps = _pool()
    _load_e0(sched, eps, ["default"])
    request = Request("r3", "m", prompt=PROMPT + " Third!!", headers=SLO)
    result = sched.schedule(request, eps)
    infos = data.per_endpoint(request, KEY, LatencyPredictionInfo)
    assert infos is not None
    # strict affinity: e0 holds the prompt (ratio 1 ≥ 0.99) but is > 5000 ms slower: all
    # kept; slo-headroom-tier-filter: e1 and e2 meet both SLOs, e0 misses TTFT: the meeting
    # tier (exploration 0.01 not drawn); loose affinity: nobody sticky among them
    assert [infos[n].ttft_valid and infos[n].tpot_valid for n in ("e0", "e1", "e2")] == [
        False, True, True
    ]  # fmt: skip
    expected = _least(infos, ["e1", "e2"], 0.8, 0.2)
    assert expected == {"e1": 0.01, "e2": 1.0}  # least headroom left first: bin packing
    assert scores(result) == {n: {"latency-scorer": s} for n, s in expected.items()}


def test_predicted_latency_pd() -> None:
    sched = guide_scheduler("predicted-latency-routing_router_predicted-latency-pd")
    eps = [endpoint("p0", 0, role="prefill", queue=0, kv=0.5),
           endpoint("p1", 1, role="prefill", queue=4, kv=0.2),
           endpoint("d0", 2, role="decode", queue=2, kv=0.6),
           endpoint("d1", 3, role="decode", queue=0, kv=0.1)]  # fmt: skip
    result = sched.schedule(Request("r1", "m", prompt=PROMPT), eps)
    # untrained: the composite fallback per profile, maxQ over that profile's candidates
    assert scores(result, "prefill") == {"p0": {"ttft-scorer": 0.5}, "p1": {"ttft-scorer": 0.27}}
    assert scores(result, "decode") == {"d0": {"tpot-scorer": 0.13}, "d1": {"tpot-scorer": 0.63}}

    _train(sched)
    eps = _pool(e0="prefill", e1="prefill-decode", e2="decode")
    _load_e0(sched, eps, ["decode", "prefill"])  # both legs on e0, no decode candidate
    request = Request("r3", "m", prompt=PROMPT + " Third!!")
    result = sched.schedule(request, eps)
    infos = data.per_endpoint(request, KEY, LatencyPredictionInfo)
    assert infos is not None
    # prefill (e0, e1): e0 sticky but > 5000 ms slower, all kept; no SLO: idle e1 alone is
    # scored, a group of one: both dimensions flat, 0.5 each -> int(50) + 1 = 51 of 100
    assert infos["e0"].ttft_ms - infos["e1"].ttft_ms > 5000
    assert scores(result, "prefill") == {"e0": {"ttft-scorer": 0.0}, "e1": {"ttft-scorer": 0.51}}
    # decode (e1, e2), both idle: TPOT only (ttftWeight 0, tpotWeight 1)
    decode = _least(infos, ["e1", "e2"], 0.0, 1.0)
    assert scores(result, "decode") == {n: {"tpot-scorer": s} for n, s in decode.items()}
