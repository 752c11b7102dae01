"""Capacity at SLO: the bisection, the SLO verdict, vLLM's result keys and goodput, and the
mixed and ShareGPT workloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvgate.bench.mixed import MixedParams, mixed
from kvgate.bench.runner import RequestRecord
from kvgate.bench.sharegpt import ShareGPTParams, sharegpt
from kvgate.bench.slo_capacity import Probe, SettledMiss, SLOTarget, evaluate, search_capacity
from kvgate.bench.vllm_results import vllm_result
from kvgate.bench.workloads import WorkloadError
from kvgate.kvcache.tokenize import Tokenizer


def _fake(boundary: float, calls: list[float]):  # type: ignore[no-untyped-def]
    def measure(rate: float) -> Probe:
        calls.append(rate)
        return Probe(rate, 10, 0, 1.0, 1.0, rate <= boundary)

    return measure


def test_bisection_brackets_the_boundary_in_a_bounded_number_of_runs() -> None:
    calls: list[float] = []
    found = search_capacity("p", _fake(7.3, calls), rate_lo=1, rate_hi=64, steps=5)
    assert found.bracketed and found.capacity_rps <= 7.3 < (found.miss_rps or 0)
    assert (found.miss_rps or 0) / found.capacity_rps <= 64 ** (1 / 2**5) + 1e-9
    assert calls[:2] == [1, 64] and len(calls) == 7 == len(found.probes)


def test_range_ends_that_decide_alone() -> None:
    none: list[float] = []
    low = search_capacity("p", _fake(0.5, none), rate_lo=1, rate_hi=8)
    assert (low.capacity_rps, low.bracketed, none) == (0.0, True, [1])
    top = search_capacity("p", _fake(100, []), rate_lo=1, rate_hi=8)
    assert (top.capacity_rps, top.bracketed) == (8, False)
    with pytest.raises(ValueError, match="rate_lo < rate_hi"):
        search_capacity("p", _fake(1, []), rate_lo=4, rate_hi=2)


def _rec(i: int, ttft_ms: float, itl_ms: float, tokens: int = 11, error: str | None = None):  # type: ignore[no-untyped-def]
    ttft, itl = ttft_ms / 1e3, itl_ms / 1e3
    return RequestRecord(
        f"r{i}", f"s{i}", 0, 0, start_s=float(i), prompt_tokens=100, max_tokens=tokens,
        ttft_s=ttft, e2e_s=ttft + itl * (tokens - 1), itl_s=[itl] * (tokens - 1),
        output_tokens=tokens if error is None else 0, error=error,
        status=200 if error is None else 503,
    )  # fmt: skip


def test_vllm_result_keys_goodput_and_tpot() -> None:
    records = [_rec(0, 100, 10), _rec(1, 300, 10), _rec(2, 100, 40), _rec(3, 0, 0, error="x")]
    r = vllm_result(records, goodput_slos_ms={"ttft": 200, "tpot": 20})
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p99"):
            assert f"{stat}_{metric}_ms" in r
    assert (r["completed"], r["failed"]) == (3, 1)
    assert r["total_input_tokens"] == 300 and r["total_output_tokens"] == 33
    # first sent at 0 s, last answered at 3 s (the failure, at once)
    assert r["duration"] == pytest.approx(3.0)
    assert r["request_goodput"] == pytest.approx(1 / 3)  # only r0 meets both
    assert r["request_throughput"] == pytest.approx(3 / 3)
    assert r["mean_tpot_ms"] == pytest.approx(20.0) and r["median_ttft_ms"] == pytest.approx(100)
    assert vllm_result(records)["request_goodput"] is None  # no --goodput: null, as vLLM


def test_evaluate_uses_p90_of_ttft_and_pooled_itl_and_counts_errors() -> None:
    slo = SLOTarget(ttft_p90_ms=150, itl_p90_ms=20, max_error_share=0.1)
    good = [_rec(i, 100, 10) for i in range(10)]
    assert evaluate(2.0, good, slo).meets
    slow = [*good[:8], _rec(8, 500, 10), _rec(9, 500, 10)]
    assert not evaluate(2.0, slow, slo).meets  # 2 of 10 over: p90 over the limit
    failing = [*good[:8], _rec(8, 0, 0, error="x"), _rec(9, 0, 0, error="x")]
    probe = evaluate(2.0, failing, slo)
    assert not probe.meets and probe.errors == 2
    assert probe.vllm["request_goodput"] is not None


def test_a_settled_miss_is_a_miss_however_the_rest_ends() -> None:
    """SettledMiss answers at the first slow request that settles the verdict, and then
    every way the requests still in flight could end (all fast, or cancelled) gives
    evaluate() a miss; before arrivals end it never answers."""
    slo = SLOTarget(ttft_p90_ms=100, itl_p90_ms=50, max_error_share=0.05)
    for n in range(1, 200):
        settle_at = math.ceil(0.1 * n + 2)
        if settle_at > n:
            continue  # too few requests for anything to be settled early
        slow = [_rec(i, 500, 10) for i in range(settle_at)]
        early = SettledMiss(slo)
        assert all(early(rec, n, arrivals_done=False) is None for rec in slow)
        stop = SettledMiss(slo)
        answers = [stop(rec, n, arrivals_done=True) for rec in slow]
        assert answers[:-1] == [None] * (settle_at - 1) and answers[-1], n
        rest = [_rec(1000 + i, 1, 10) for i in range(n - settle_at)]
        assert not evaluate(1.0, [*slow, *rest], slo).meets, n
        assert not evaluate(1.0, slow, slo).meets, n
    stop = SettledMiss(slo)
    answers = [stop(_rec(i, 0, 0, error="x"), 100, arrivals_done=True) for i in range(6)]
    assert answers[:5] == [None] * 5 and answers[5] == "6 of 100 requests failed"


def test_mixed_workload_lengths_prefixes_and_slo_classes() -> None:
    sessions = mixed(MixedParams(num_requests=200), "completions", seed=3)
    prompts = [s.turns[0].prompt_tokens for s in sessions]
    outputs = [s.turns[0].max_tokens for s in sessions]
    assert min(prompts) >= 100 and max(prompts) <= 16000 and max(prompts) > 4000  # long tail
    assert min(outputs) >= 10 and max(outputs) <= 1000
    groups = [s.turns[0].group for s in sessions if s.turns[0].group]
    counts = sorted((groups.count(g) for g in set(groups)), reverse=True)
    assert counts[0] >= 5 * counts[-1]  # popular prefixes and rare ones
    classes = {s.tenant: dict(s.headers) for s in sessions}
    assert classes["interactive"] == {"x-slo-ttft-ms": "1000", "x-slo-tpot-ms": "50"}
    assert classes["batch"]["x-slo-ttft-ms"] == "10000"
    tokenizer = Tokenizer.default()
    for s in sessions[:10]:  # exact prompt lengths, shared prefix included
        turn = s.turns[0]
        assert turn.prompt is not None
        assert len(tokenizer.encode(turn.prompt, add_special_tokens=False)) == turn.prompt_tokens


def test_sharegpt_file_is_sampled_with_vllms_filters(tmp_path: Path) -> None:
    words = " ".join(["word"] * 50)
    convs = [
        {"conversations": [{"from": "human", "value": f"question {i} {words}"},
                           {"from": "gpt", "value": f"answer {i} {words}"}]}
        for i in range(6)
    ] + [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human", "value": "alone"}]},
        {"conversations": [{"from": "human", "value": "x " * 1500},
                           {"from": "gpt", "value": words}]},
    ]  # fmt: skip
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs))
    sessions = sharegpt(ShareGPTParams(str(path), num_requests=100), "completions", 1)
    assert len(sessions) == 6  # too short, single-turn and too long are skipped
    assert all(s.turns[0].prompt and s.turns[0].prompt.startswith("question") for s in sessions)
    assert all(s.turns[0].max_tokens > 4 for s in sessions)
    fixed = sharegpt(ShareGPTParams(str(path), num_requests=2, output_len=7), "completions", 1)
    assert [s.turns[0].max_tokens for s in fixed] == [7, 7]
    path.write_text("{}")
    with pytest.raises(WorkloadError, match="expected a JSON list"):
        sharegpt(ShareGPTParams(str(path)), "completions", 1)
