"""llm-d's guide configs, loaded verbatim and scheduled: per-scorer scores, filter survivors
and picks against the formulas llm-d-router documents for each plugin (issue #22).

Every ``tests/data/llm-d-configs/llm-d__guides_*.yaml`` is covered by the test named in
:data:`COVERAGE`; guides sharing a scheduling pipeline share a test:

* queue 2 + kv-cache-utilization 2 + prefix 3 (``test_queue_kv_prefix``):
  inference-scheduling, flow-control, agentic-serving-gpu-program-aware,
  turn-priority-fairness (the last three's flow-control sections: test_llmd_guides_flow.py;
  this prefix-cache-scorer names no producer, so it keeps kvgate's own index, the difference
  ``config check --strict`` names for llm-d.ai configs; whole-prompt matches score alike);
* the same + no-hit-lru 2 (``test_queue_kv_prefix_no_hit_lru``): optimized-baseline (scheduler);
* two prefix scorers, GPU and CPU tiers (``test_tiered_prefix_cache_cpu``);
* prefix-cache-affinity-filter + token-load-scorer: optimized-baseline (router) with the
  in-flight tokens gate, agentic-serving with the TTFT gate (its program-aware fairness is
  the LAS policy checked with agentic-serving-gpu-program-aware);
* P/D, precise prefix and p2p pipelines: test_llmd_guides_pd.py, test_llmd_guides_precise.py;
  predicted latency: test_llmd_guides_latency.py.

Two guides are refused on purpose (the guide's own slip), and only the refusal is asserted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvgate.scheduling.types import Request
from scheduling.guide_kit import (
    CONFIGS,
    PROMPT,
    dispatch,
    endpoint,
    guide,
    guide_scheduler,
    picked,
    scores,
    totals,
)

QUEUE_KV_PREFIX = (
    "inference-scheduling_scheduler_inference-scheduling",
    "flow-control_router_flow-control",
    "agentic-serving_router_agentic-serving-gpu-program-aware",
    "turn-priority-fairness_router_turn-priority-fairness",
)

REFUSED = {
    "agentic-serving_router_agentic-serving-gpu": (
        "schedulingProfiles[decode].plugins[1].pluginRef: unknown plugin 'active-request-scorer'"
    ),
    "wide-ep-lws_router_wide-ep-lws": (
        "plugins[disaggregatedset-rollout-screener].parameters.revisionGating.requiredRoles: "
        "unknown parameter"
    ),
}

PD = "test_llmd_guides_pd.py"
PRECISE = "test_llmd_guides_precise.py"
LATENCY = "test_llmd_guides_latency.py"
FLOW = "test_llmd_guides_flow.py"
HERE = "test_llmd_guides.py"

FLOW_TESTS = {
    "inference-scheduling_scheduler_inference-scheduling": (),
    "flow-control_router_flow-control": ((FLOW, "test_priority_bands_round_robin_fcfs"),),
    "agentic-serving_router_agentic-serving-gpu-program-aware": (
        (FLOW, "test_program_aware_fairness"),
    ),
    "turn-priority-fairness_router_turn-priority-fairness": ((FLOW, "test_turn_priority"),),
}

#: guide -> the (module, test) pairs that check its pipeline
COVERAGE: dict[str, tuple[tuple[str, str], ...]] = {
    **{name: ((HERE, "test_queue_kv_prefix"), *FLOW_TESTS[name]) for name in QUEUE_KV_PREFIX},
    "optimized-baseline_scheduler_optimized-baseline": ((HERE, "test_queue_kv_prefix_no_hit_lru"),),
    "tiered-prefix-cache_cpu_router_tiered-prefix-cache-cpu": (
        (HERE, "test_tiered_prefix_cache_cpu"),
    ),
    "optimized-baseline_router_optimized-baseline": (
        (HERE, "test_affinity_tokens_in_flight_gate"),
    ),
    "agentic-serving_router_agentic-serving": ((HERE, "test_affinity_ttft_gate"),),
    "pd-disaggregation_router_pd-disaggregation": ((PD, "test_pd_affinity_token_load"),),
    "pd-disaggregation_scheduler_pd-disaggregation": ((PD, "test_pd_prefix_queue_kv"),),
    "wide-ep_router_wide-ep": ((PD, "test_wide_ep"),),
    "pd-disaggregation_router_pd-multi-tier": ((PRECISE, "test_pd_multi_tier"),),
    "precise-prefix-cache-aware_scheduler_precise-prefix-cache-aware": (
        (PRECISE, "test_precise_decode_filter"),
    ),
    "precise-prefix-cache-routing_router_precise-prefix-cache-routing": (
        (PRECISE, "test_precise_no_hit_lru"),
    ),
    "p2p-kv-cache-sharing_router_p2p-kv-cache-sharing": ((PRECISE, "test_p2p_source"),),
    "predicted-latency-routing_router_predicted-latency": ((LATENCY, "test_predicted_latency"),),
    "predicted-latency-routing_router_predicted-latency-slo": (
        (LATENCY, "test_predicted_latency_slo"),
    ),
    "predicted-latency-routing_router_predicted-latency-pd": (
        (LATENCY, "test_predicted_latency_pd"),
    ),
    **{name: ((HERE, "test_refused"),) for name in REFUSED},
}

T = 4194304  # token-load-scorer's default queueThresholdTokens


def test_every_guide_is_covered() -> None:
    """Each guide file maps to tests that exist; the map names every guide file."""
    guides = {p.name for p in CONFIGS.glob("llm-d__guides_*.yaml")}
    assert len(guides) == 20
    assert {guide(name).name for name in COVERAGE} == guides
    here = Path(__file__).parent
    for name, tests in COVERAGE.items():
        for module, test in tests:
            text = (here / module).read_text()
            assert re.search(rf"^(async )?def {test}\(", text, re.M), (name, module, test)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name: str) -> None:
    from config.test_published_configs import _outcome

    assert _outcome(guide(name)) == REFUSED[name]


@pytest.mark.parametrize("name", QUEUE_KV_PREFIX)
def test_queue_kv_prefix(name: str) -> None:
    sched = guide_scheduler(name)
    eps = [endpoint("e0", 0, queue=0, kv=0.5), endpoint("e1", 1, queue=4, kv=0.2),
           endpoint("e2", 2, queue=8, kv=0.1)]  # fmt: skip
    cold = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(cold, eps)
    # queue: (maxQ − q)/(maxQ − minQ); kv: 1 − usage; prefix: matched/total blocks, none yet
    assert scores(result) == {
        "e0": {"queue-scorer": 1.0, "kv-cache-utilization-scorer": 0.5, "prefix-cache-scorer": 0},
        "e1": {"queue-scorer": 0.5, "kv-cache-utilization-scorer": 0.8, "prefix-cache-scorer": 0},
        "e2": {"queue-scorer": 0.0, "kv-cache-utilization-scorer": 0.9, "prefix-cache-scorer": 0},
    }
    assert totals(result) == pytest.approx({"e0": 3.0, "e1": 2.6, "e2": 1.8})
    assert picked(result) == "e0"
    sched.pre_request(cold, result)

    # e0 now holds the prompt but has the longest queue: prefix weight 3 still wins
    eps = [endpoint("e0", 0, queue=8, kv=0.5), endpoint("e1", 1, queue=0, kv=0.1),
           endpoint("e2", 2, queue=4, kv=0.3)]  # fmt: skip
    result = sched.schedule(Request("r2", "m", prompt=PROMPT + " Again!!"), eps)
    got = scores(result)
    assert [got[n]["prefix-cache-scorer"] for n in ("e0", "e1", "e2")] == [1.0, 0.0, 0.0]
    assert [got[n]["queue-scorer"] for n in ("e0", "e1", "e2")] == [0.0, 1.0, 0.5]
    assert totals(result) == pytest.approx({"e0": 4.0, "e1": 3.8, "e2": 2.4})
    assert picked(result) == "e0"


def test_queue_kv_prefix_no_hit_lru() -> None:
    sched = guide_scheduler("optimized-baseline_scheduler_optimized-baseline")
    eps = [endpoint("e0", 0, queue=0, kv=0.5), endpoint("e1", 1, queue=4, kv=0.2),
           endpoint("e2", 2, queue=8, kv=0.1)]  # fmt: skip

    def cold(request_id: str, expected_lru: list[float], expected_pick: str) -> None:
        request = Request(request_id, "m", prompt=f"{request_id}: " + PROMPT)
        result = sched.schedule(request, eps)
        assert [scores(result)[n]["no-hit-lru-scorer"] for n in ("e0", "e1", "e2")] == (
            expected_lru
        )
        assert picked(result) == expected_pick
        sched.pre_request(request, result)

    # cold, N = 3: never-used endpoints 1 − i/(N − 1) in candidate order; then used ones by
    # LRU position p (0 = oldest): 1 − (nNever + p)/(N − 1). Totals add queue/kv as above
    # (3.0, 2.6, 1.8) and 2 × no-hit-lru.
    cold("r1", [1.0, 0.5, 0.0], "e0")  # 5.0, 3.6, 1.8
    cold("r2", [0.0, 1.0, 0.5], "e1")  # LRU e0: 3.0, 4.6, 2.8
    cold("r3", [0.5, 0.0, 1.0], "e0")  # LRU e0, e1: 4.0, 2.6, 3.8
    cold("r4", [0.0, 0.5, 1.0], "e2")  # LRU e1, e0: 3.0, 3.6, 3.8
    # warm (e0 holds r1's prompt): 0.5 everywhere, and the LRU is left alone
    warm = Request("r5", "m", prompt="r1: " + PROMPT + " Again!!")
    result = sched.schedule(warm, eps)
    got = scores(result)
    assert {n: (s["prefix-cache-scorer"], s["no-hit-lru-scorer"]) for n, s in got.items()} == {
        "e0": (1.0, 0.5), "e1": (0.0, 0.5), "e2": (0.0, 0.5)
    }  # fmt: skip
    assert picked(result) == "e0"
    sched.pre_request(warm, result)
    cold("r6", [0.5, 1.0, 0.0], "e1")  # LRU e1, e0, e2, unchanged by r5: 4.0, 4.6, 1.8


def test_tiered_prefix_cache_cpu() -> None:
    """GPU tier: the producer-less gpu-prefix-cache-scorer, on kvgate's own index (the
    difference ``config check --strict`` names: 64-byte blocks, one per vLLM block of 16
    tokens, as many as the endpoint has GPU blocks); CPU tier: cpuPrefixProducer's matches
    (256-byte blocks, 41000 per endpoint). Weights queue 2, kv 2, gpu 1, cpu 1."""
    from kvgate.config import load_picker_config
    from kvgate.config.strict import strict_differences

    name = "tiered-prefix-cache_cpu_router_tiered-prefix-cache-cpu"
    notes = strict_differences(load_picker_config(guide(name), env={}))
    assert any(
        n.startswith("plugins[gpu-prefix-cache-scorer]: names no prefix producer") for n in notes
    )
    sched = guide_scheduler(name)
    # 8 GPU blocks of 16 tokens: e0's GPU tier keeps 8 of the prompt's 22 blocks of 64 B
    eps = [endpoint("e0", 0, queue=2, kv=0.4, gpu_blocks=8), endpoint("e1", 1, queue=0, kv=0.2),
           endpoint("e2", 2, queue=4, kv=0.2)]  # fmt: skip
    cold = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(cold, eps)
    assert {n: s["gpu-prefix-cache-scorer"] + s["cpu-prefix-cache-scorer"]
            for n, s in scores(result).items()} == {"e0": 0, "e1": 0, "e2": 0}  # fmt: skip
    assert totals(result) == pytest.approx({"e0": 1 + 1.2, "e1": 2 + 1.6, "e2": 0 + 1.6})
    dispatch(sched, cold, {"default": eps[0]}, "default")  # e0 serves it

    result = sched.schedule(Request("r2", "m", prompt=PROMPT + " Again!!"), eps)
    got = scores(result)
    assert got["e0"]["gpu-prefix-cache-scorer"] == pytest.approx(8 / 22)
    assert got["e0"]["cpu-prefix-cache-scorer"] == 1.0  # 5 of 5 blocks of 256 B
    assert got["e1"]["gpu-prefix-cache-scorer"] == got["e1"]["cpu-prefix-cache-scorer"] == 0
    assert totals(result) == pytest.approx({"e0": 2.2 + 8 / 22 + 1, "e1": 3.6, "e2": 1.6})
    assert picked(result) == "e1"  # 3.6 > 3.56: the two tiers do not outweigh e1's queue


def _affinity_scenario(name: str) -> tuple[str, list[str], dict[str, float]]:
    """r1 cold; the endpoint X it lands on is loaded with 300,000 tokens; r3 shares r1's
    prefix. Returns X, r3's survivors and its token-load scores."""
    sched = guide_scheduler(name)
    eps = [endpoint(f"e{i}", i) for i in range(3)]
    r1 = Request("r1", "m", prompt=PROMPT)  # 352 tokens (4 bytes each)
    result = sched.schedule(r1, eps)
    # nothing cached: no endpoint is sticky, all kept; token-load 1 − (0 + 352)/T everywhere
    assert scores(result) == {f"e{i}": {"token-load-scorer": 1 - 352 / T} for i in range(3)}
    x = picked(result)
    sched.pre_request(r1, result)  # X: 1 request, 352 tokens in flight, r1's blocks learnt

    r2 = Request("r2", "m", prompt=PROMPT + " Again!!")  # 354 tokens, r1's blocks cached on X
    result = sched.schedule(r2, eps)
    assert list(scores(result)) == [x]  # sticky: ratio 1 ≥ 0.8, X's load is no reason to leave
    assert picked(result) == x

    big = Request("big", "m", prompt="x" * 1_200_000)  # 300,000 tokens
    sched.schedule(big, eps)
    dispatch(sched, big, {"default": next(e for e in eps if e.name == x)}, "default")
    r3 = Request("r3", "m", prompt=PROMPT + " Third!!")
    result = sched.schedule(r3, eps)
    got = {n: s["token-load-scorer"] for n, s in scores(result).items()}
    assert picked(result) != x
    return x, list(scores(result)), got


def test_affinity_tokens_in_flight_gate() -> None:
    """optimized-baseline (router): affinityThreshold 0.8, maxTTFTPenaltyMs 0 (no TTFT gate),
    maxTokensInFlightPenalty 286720: stickiness breaks once the least-loaded sticky endpoint
    holds more than that many tokens over the least-loaded other one. Blocks of 64 tokens."""
    x, survivors, got = _affinity_scenario("optimized-baseline_router_optimized-baseline")
    assert sorted(survivors) == ["e0", "e1", "e2"]  # 300,352 − 0 > 286,720: keep all
    # in flight + this request's uncached tokens: X holds 5 blocks of 64 → 354 − 320 = 34
    assert got == {n: 1 - (300352 + 34) / T if n == x else 1 - 354 / T for n in survivors}


def test_affinity_ttft_gate() -> None:
    """agentic-serving: the TTFT gate (maxTTFTPenaltyMs 18000 by default) with
    peakPrefillThroughput 16444 tokens/s: 300,352 tokens ≈ 18,265 ms on X against 0 ms
    elsewhere breaks stickiness. Blocks of 256 tokens (autoTune off, blockSizeTokens 256)."""
    x, survivors, got = _affinity_scenario("agentic-serving_router_agentic-serving")
    assert sorted(survivors) == ["e0", "e1", "e2"]
    # X holds r3's one full block of 256 tokens: 354 − 256 = 98 uncached
    assert got == {n: 1 - (300352 + 98) / T if n == x else 1 - 354 / T for n in survivors}
