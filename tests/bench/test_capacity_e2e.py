"""A tiny `kvgate bench capacity` end to end: real sim replicas and gateways per probe,
the mixed workload and a ShareGPT file, results under vLLM's keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SHORT_MIXED = [
    "-W", "prompt_median=150", "-W", "max_prompt_len=400", "-W", "output_median=6",
    "-W", "max_output_len=12", "-W", "num_prefixes=3", "-W", "prefix_median=100",
]  # fmt: skip


def _capacity(out: Path, *args: str) -> dict:  # type: ignore[type-arg]
    cmd = [
        sys.executable, "-m", "kvgate", "bench", "capacity",
        "--replicas", "2", "--speed", "4", "--num-gpu-blocks", "400",
        "--probe-requests", "6", "--rate-lo", "2", "--rate-hi", "8", "--steps", "0",
        "--slo-ttft-p90-ms", "60000", "--slo-itl-p90-ms", "60000",
        "--output", str(out), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads((out / "results.json").read_text()))


def test_tiny_capacity_search_with_the_mixed_workload(tmp_path: Path) -> None:
    doc = _capacity(tmp_path / "out", "--policies", "predicted-latency", *SHORT_MIXED)
    (result,) = doc["results"]
    # SLOs no probe can miss: both ends meet, so the capacity is "at least the top"
    assert result["policy"] == "predicted-latency"
    assert result["capacity_rps"] == 8 and result["bracketed"] is False
    assert [p["rate"] for p in result["probes"]] == [2, 8]
    # every probe says what to read its verdict beside: the replicas were scraped
    for probe in result["probes"]:
        assert 0 <= probe["hit_rate"] <= 1 and probe["balance_max_over_mean"] >= 1
        assert probe["replica_lag_share"] >= 0 and probe["load_average_1m"] >= 0
    vllm = json.loads((tmp_path / "out" / "predicted-latency" / "rate-8.json").read_text())
    assert vllm["completed"] == 6 and vllm["failed"] == 0 and vllm["request_rate"] == 8
    assert vllm["request_goodput"] > 0
    for key in ("mean_ttft_ms", "median_tpot_ms", "std_itl_ms", "p99_e2el_ms", "duration"):
        assert key in vllm


def test_tiny_capacity_search_with_a_sharegpt_file(tmp_path: Path) -> None:
    words = " ".join(["token"] * 20)
    convs = [
        {"conversations": [{"from": "human", "value": f"q{i} {words}"},
                           {"from": "gpt", "value": "a b c d e f"}]}
        for i in range(4)
    ]  # fmt: skip
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(convs))
    doc = _capacity(
        tmp_path / "out", "--policies", "round-robin", "--dataset", "sharegpt", str(data),
        "--slo-ttft-p90-ms", "0.001",  # impossible: the lowest rate misses
    )  # fmt: skip
    (result,) = doc["results"]
    assert result["capacity_rps"] == 0 and [p["rate"] for p in result["probes"]] == [2]
    assert doc["workload"] == "sharegpt"
