"""Outcome buckets, the overload ladder and the per-tenant report, on hand-built records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgate.bench.capacity import estimate_capacity
from kvgate.bench.ladder import ladder_markdown
from kvgate.bench.outcomes import OutcomeCounts
from kvgate.bench.report import summarize, write_outputs
from kvgate.bench.runner import RequestRecord
from kvgate.bench.tenant_report import UNLOADED_SUFFIX, tenant_markdown, tenant_rows


def rec(
    i: int,
    start: float,
    *,
    error: str | None = None,
    body: str = "",
    failed_after: float | None = None,
    stage: int = 0,
    tenant: str = "",
    ttft: float = 0.1,
) -> RequestRecord:
    ok = error is None
    return RequestRecord(
        request_id=f"r{i}",
        session_id=f"s{i}",
        turn=0,
        stage=stage,
        start_s=start,
        prompt_tokens=100,
        max_tokens=10,
        ttft_s=ttft if ok else None,
        e2e_s=1.0 if ok else None,
        output_tokens=10 if ok else 0,
        error=error,
        tenant=tenant,
        failed_after_s=failed_after,
        error_body=body,
    )


MIXED = [
    rec(0, 0.0),
    rec(1, 0.1),
    rec(2, 0.2, error="http_429", body='{"error": "saturated"}', failed_after=0.01),
    rec(3, 0.3, error="http_429", failed_after=0.03),  # no body: not an explicit answer
    rec(4, 0.4, error="http_503", body='{"error": "ttl"}', failed_after=2.0),
    rec(5, 0.5, error="timeout", failed_after=60.0),
    rec(6, 0.6, error="connect"),
    rec(7, 0.7, error="http_500", body="boom"),
]


def test_every_request_in_exactly_one_bucket() -> None:
    o = OutcomeCounts.of(MIXED)
    assert (o.ok, o.rejected_429, o.unavailable_503, o.timeouts, o.other_errors) == (2, 2, 1, 1, 2)
    assert o.counted == o.requests == len(MIXED)
    assert o.explicit_rejections == 2
    # p90 of the three 429/503 answer times 0.01, 0.03, 2.0: 0.03 + 0.8 * 1.97
    assert o.rejection_p90_s == pytest.approx(1.606)


def test_summary_and_results_json_carry_the_outcomes(tmp_path: Path) -> None:
    s = summarize("p", MIXED)
    assert s.outcomes == OutcomeCounts.of(MIXED)
    write_outputs(tmp_path, [s], {"p": MIXED}, baseline=None)
    (entry,) = json.loads((tmp_path / "results.json").read_text())
    assert entry["outcomes"]["rejected_429"] == 2
    assert entry["stages"][0]["timeouts"] == 1
    # records keep the answer time and body of a rejection
    line = (tmp_path / "requests" / "p.jsonl").read_text().splitlines()[2]
    assert json.loads(line)["error_body"] == '{"error": "saturated"}'


def test_ladder_reads_share_of_peak_and_rejections_per_stage(tmp_path: Path) -> None:
    # stage 0: 4 ok in 1 s; stage 1: 2 ok and 2 explicit 429s
    records = [rec(i, 0.0, stage=0) for i in range(4)] + [
        rec(4, 10.0, stage=1),
        rec(5, 10.0, stage=1),
        rec(6, 10.0, stage=1, error="http_429", body="{}", failed_after=0.002),
        rec(7, 10.0, stage=1, error="http_429", body="{}", failed_after=0.004),
    ]
    s = summarize("fc", records, rates={0: 3.0, 1: 60.0})
    assert ladder_markdown([summarize("one", records[:4])]) is None  # one stage: no ladder
    table = ladder_markdown([s])
    assert table is not None
    rows = [ln for ln in table.splitlines() if ln.startswith("| fc |")]
    # generated while each stage was offered (10 s windows): 40 and 20 tokens; the stage's own
    # requests over their span: 40 and 20 tok/s
    assert rows[0].split(" | ")[1:8] == ["3", "4", "4", "4", "100%", "40", "0"]
    assert rows[1].split(" | ")[1:12] == ["60", "4", "2", "2", "50%", "20", "2", "0", "2", "4", "0"]
    write_outputs(tmp_path, [s], {"fc": records}, baseline=None)
    assert "## Overload ladder" in (tmp_path / "report.md").read_text()


def test_tenant_report_loaded_vs_unloaded_and_capacity() -> None:
    loaded = [rec(i, i * 0.1, tenant="interactive", ttft=0.5) for i in range(10)]
    loaded += [rec(10 + i, i * 0.1, tenant="batch") for i in range(5)]
    loaded += [rec(20, 0.5, tenant="batch", error="http_429", body="{}", failed_after=0.01)]
    ref = [rec(30 + i, i * 0.1, tenant="interactive", ttft=0.1) for i in range(10)]
    rows = tenant_rows("fc", loaded) + tenant_rows("fc" + UNLOADED_SUFFIX, ref)
    assert [(r.run, r.tenant, r.summary.requests) for r in rows] == [
        ("fc", "interactive", 10),
        ("fc", "batch", 6),
        ("fc (unloaded)", "interactive", 10),
    ]
    cap = estimate_capacity("qwen3-0.6b-h100", 1, 2048, 256)
    text = tenant_markdown(rows, capacity=cap, batch_rate_rps=12.0)
    assert "| fc | batch | 6 |" in text
    assert "interactive TTFT p90 500 ms loaded vs 100 ms unloaded (5.00×)" in text
    assert f"estimated capacity ({cap.requests_per_s:.2f} req/s), offered 12.00 req/s" in text


def test_capacity_estimate_follows_the_latency_model() -> None:
    one = estimate_capacity("qwen3-0.6b-h100", 1, 2048, 256)
    four = estimate_capacity("qwen3-0.6b-h100", 4, 2048, 256)
    assert four.requests_per_s == pytest.approx(4 * one.requests_per_s)
    assert one.batch_per_replica == 256  # max_num_seqs binds: the profile's KV holds more
    small_kv = estimate_capacity("qwen3-0.6b-h100", 1, 2048, 256, num_gpu_blocks=1000)
    assert small_kv.batch_per_replica == 1000 * 16 // (2048 + 256)
    assert small_kv.requests_per_s < one.requests_per_s
