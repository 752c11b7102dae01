"""A tiny `kvgate bench compare` end to end: real sim replicas, real gateways, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kvgate.bench.report import RESULT_KEYS


def test_tiny_compare_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "kvgate", "bench", "compare",
        "--policies", "round-robin,llm-d-default",
        "--replicas", "2",
        "--speed", "4",
        "--num-gpu-blocks", "400",
        "-W", "num_groups=2", "-W", "prompts_per_group=3", "-W", "warmup_per_group=1",
        "-W", "system_prompt_len=200", "-W", "question_len=10", "-W", "output_len=4",
        "--rate", "20",
        "--output", str(out),
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in results] == ["round-robin", "llm-d-default"]
    for r in results:
        assert set(RESULT_KEYS) <= set(r)
        assert r["requests"] == 6 and r["errors"] == 0
        assert r["ttft_p50_s"] > 0 and r["output_tok_s"] > 0
        # hit rate and balance come from the replicas' own counters, scraped after the
        # two warm-up requests
        assert r["hit_rate_source"] == "server"
        assert sum(r["replica_requests"].values()) == 6
    rr = results[0]
    assert sorted(rr["replica_requests"].values()) == [3.0, 3.0]  # round-robin alternates
    for name in ("report.md", "ttft_cdf.png", "ttft_throughput_vs_rate.png", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    assert "| round-robin |" in (out / "report.md").read_text()
    assert "round-robin" in proc.stdout and "llm-d-default" in proc.stdout
