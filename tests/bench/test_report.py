"""Report arithmetic against hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgate.bench.report import (
    RESULT_KEYS,
    ReplicaCounters,
    comparison_line,
    lag_warning,
    markdown_table,
    parse_counters,
    percentile,
    pick_baseline,
    summarize,
    write_outputs,
)
from kvgate.bench.runner import RequestRecord


def rec(
    i: int,
    start: float,
    ttft: float | None,
    e2e: float | None,
    out: int,
    *,
    itl: list[float] | None = None,
    prompt: int = 100,
    cached: int | None = None,
    error: str | None = None,
    stage: int = 0,
) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        session_id=f"s{i}",
        turn=0,
        stage=stage,
        start_s=start,
        prompt_tokens=prompt,
        max_tokens=out,
        ttft_s=ttft,
        e2e_s=e2e,
        itl_s=itl or [],
        output_tokens=out,
        cached_tokens=cached,
        status=200 if error is None else 500,
        error=error,
    )


def test_percentile_interpolates_linearly() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    # (n-1)*q = 9*0.9 = 8.1 -> x[8] + 0.1*(x[9]-x[8]) = 9 + 0.1
    assert percentile([float(x) for x in range(10, 0, -1)], 90) == pytest.approx(9.1)
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_summary_by_hand() -> None:
    records = [
        rec(0, 0.0, 0.1, 1.0, 10, itl=[0.1, 0.1], prompt=100, cached=0),
        rec(1, 0.5, 0.2, 1.5, 10, itl=[0.2, 0.3], prompt=100, cached=50),
        rec(2, 1.0, 0.3, 2.0, 20, itl=[0.4], prompt=200, cached=150),
        rec(3, 1.5, None, None, 0, error="http_503"),
    ]
    s = summarize("p", records)
    assert s.requests == 4 and s.errors == 1
    assert s.errors_by_kind == {"http_503": 1}
    assert s.ttft_p50_s == pytest.approx(0.2)
    assert s.ttft_p90_s == pytest.approx(0.28)  # 2*0.9 = 1.8 -> 0.2 + 0.8*0.1
    assert s.ttft_mean_s == pytest.approx(0.2)
    assert s.itl_p50_s == pytest.approx(0.2)  # pooled [0.1,0.1,0.2,0.3,0.4]
    assert s.e2e_p90_s == pytest.approx(1.9)  # [1.0,1.5,2.0]: 1.5 + 0.8*0.5
    # span: first start 0.0 to last end max(1.0, 2.0, 3.0) = 3.0
    assert s.duration_s == pytest.approx(3.0)
    assert s.output_tok_s == pytest.approx(40 / 3.0)
    assert s.req_s == pytest.approx(1.0)
    assert s.hit_rate_usage == pytest.approx(200 / 400)
    assert s.hit_rate == s.hit_rate_usage and s.hit_rate_source == "usage"
    # TPOT: (e2e - ttft)/(out-1): 0.9/9, 1.3/9, 1.7/19 -> median 0.1
    assert s.tpot_p50_s == pytest.approx(0.1)


def test_server_hit_rate_and_balance_from_counter_deltas() -> None:
    before = {"a": ReplicaCounters(100, 10, 5, 0), "b": ReplicaCounters(0, 0, 0, 0)}
    after = {"a": ReplicaCounters(1100, 610, 35, 0), "b": ReplicaCounters(1000, 200, 10, 0)}
    s = summarize(
        "p",
        [rec(0, 0, 0.1, 0.2, 2)],
        before=before,
        after=after,
        replica_names={"a": "replica-0", "b": "replica-1"},
    )
    # (600 + 200) / (1000 + 1000)
    assert s.hit_rate == pytest.approx(0.4) and s.hit_rate_source == "server"
    assert s.replica_requests == {"replica-0": 30, "replica-1": 10}
    assert s.balance_max_over_mean == pytest.approx(1.5)


def test_replica_lag_summed_from_sim_histograms_and_reported() -> None:
    page = (
        "# HELP kvgate_sim_schedule_lag_seconds lag\n"
        "# TYPE kvgate_sim_schedule_lag_seconds histogram\n"
        'kvgate_sim_schedule_lag_seconds_bucket{le="+Inf"} 3.0\n'
        "kvgate_sim_schedule_lag_seconds_count 3.0\n"
        "kvgate_sim_schedule_lag_seconds_sum 0.25\n"
    )
    assert parse_counters(page).schedule_lag_s == 0.25
    before = {"a": ReplicaCounters(schedule_lag_s=0.25), "b": ReplicaCounters()}
    after = {"a": ReplicaCounters(schedule_lag_s=0.30), "b": ReplicaCounters(schedule_lag_s=0.1)}
    records = [rec(0, 0.0, 0.1, 2.0, 2), rec(1, 1.0, 0.1, 4.0, 2)]  # a 5 s span
    late = summarize("late", records, before=before, after=after)
    assert late.replica_lag_s == pytest.approx(0.15)
    # 0.15 s of 2 replicas x 5 s
    assert late.replica_lag_share == pytest.approx(0.015)
    # the same records in model time at --speed 0.5: the run took 10 s of wall time
    slow = summarize("slow", records, before=before, after=after, time_scale=0.5)
    assert slow.replica_lag_share == pytest.approx(0.0075)
    on_time = summarize("on-time", records, before=before, after=before)
    assert on_time.replica_lag_s == 0.0 and on_time.replica_lag_share == 0.0
    assert summarize("no-scrape", records).replica_lag_s is None
    warning = lag_warning([late, slow, on_time])
    assert warning is not None and "late 0.15 s, 1.5 %" in warning
    assert "slow 0" not in warning and "on-time" not in warning
    assert warning in markdown_table([late, on_time])
    assert lag_warning([slow, on_time]) is None
    # vLLM's page has no such family: no lag, no warning
    vllm_page = (Path(__file__).parents[1] / "data" / "vllm-cpu-metrics.txt").read_text()
    assert parse_counters(vllm_page).schedule_lag_s == 0.0


def test_parse_counters_sums_label_sets() -> None:
    text = (Path(__file__).parents[1] / "data" / "vllm-cpu-metrics.txt").read_text()
    c = parse_counters(text)
    assert c.prefix_cache_queries == 9344.0 and c.prefix_cache_hits == 6080.0
    assert c.requests_finished >= 3.0
    extra = (
        text
        + '\nvllm:request_success_total{engine="1",finished_reason="length",model_name="x"} 4.0\n'
    )
    assert parse_counters(extra).requests_finished == c.requests_finished + 4.0


def test_stages_and_outputs(tmp_path: Path) -> None:
    records = [rec(i, i * 0.1, 0.01 * (i + 1), 0.5, 5, stage=i // 5) for i in range(10)]
    a = summarize("round-robin", records, rates={0: 1.0, 1: 2.0})
    b = summarize(
        "prefix", [rec(i, i * 0.1, 0.001 * (i + 1), 0.5, 5) for i in range(10)], rates={0: 1.0}
    )
    assert [st.rate for st in a.stages] == [1.0, 2.0]
    assert [st.requests for st in a.stages] == [5, 5]
    assert a.stages[0].ttft_p50_s == pytest.approx(0.03)
    md = markdown_table([a, b])
    assert "| round-robin |" in md and "prefix: TTFT p90 10.00× lower" in md
    files = write_outputs(
        tmp_path, [a, b], {"round-robin": records, "prefix": []}, meta={"command": "x"}
    )
    names = {p.name for p in files}
    assert {"results.json", "report.md", "ttft_cdf.png", "itl_cdf.png"} <= names
    assert "ttft_throughput_vs_rate.png" in names
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["policy"] for r in results] == ["round-robin", "prefix"]
    for r in results:
        assert set(RESULT_KEYS) <= set(r)
    assert (tmp_path / "ttft_cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "itl_cdf.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "requests" / "round-robin.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["request_id"] == "r0"


def test_without_round_robin_the_first_policy_is_the_baseline_and_itl_p99_is_shown() -> None:
    # a P/D comparison: llm-d-default then pd, no round-robin; pd's gaps are 4x shorter
    agg = summarize(
        "llm-d-default", [rec(i, i * 0.1, 0.01, 0.5, 5, itl=[0.04] * 4) for i in range(10)]
    )
    pd = summarize("pd", [rec(i, i * 0.1, 0.01, 0.5, 5, itl=[0.01] * 4) for i in range(10)])
    assert pick_baseline(["llm-d-default", "pd"]) == "llm-d-default"
    assert pick_baseline(["pd", "round-robin"]) == "round-robin"
    assert pick_baseline([]) is None
    md = markdown_table([agg, pd], pick_baseline([agg.policy, pd.policy]))
    assert "| ITL p99 ms |" in md and "| 40.0 |" in md and "| 10.0 |" in md
    assert "Against llm-d-default:" in md and "ITL p99 4.00× lower" in md


def test_comparison_line_says_higher_when_slower() -> None:
    fast = summarize("round-robin", [rec(i, i * 0.1, 0.01, 0.5, 5) for i in range(10)])
    slow = summarize("random", [rec(i, i * 0.1, 0.04, 0.5, 5) for i in range(10)])
    assert comparison_line(slow, fast).startswith("TTFT p90 4.00× higher")
    assert comparison_line(fast, slow).startswith("TTFT p90 4.00× lower")
