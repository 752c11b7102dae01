"""`kvgate bench compare` with P/D and CPU-tier policies, each workload tiny and short: the
``long-prompt`` / ``short-prompt`` presets start a P/D cluster (prefill and decode roles per
replica) beside the aggregated one, and ``memory-pressure`` runs ``+cpu-tier`` policies whose
replicas have a CPU tier. Real sim replicas and gateways; the full runs are in docs/bench.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def compare(tmp_path: Path, workload: str, *args: str) -> list[dict[str, object]]:
    out = tmp_path / workload
    cmd = [
        sys.executable, "-m", "kvgate", "bench", "compare", "--workload", workload,
        "--replicas", "2", "--speed", "4", "--rate", "20", "--output", str(out),
        "--no-progress", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results: list[dict[str, object]] = json.loads((out / "results.json").read_text())
    for r in results:
        assert r["errors"] == 0, proc.stdout + proc.stderr
    return results


@pytest.mark.parametrize("workload", ["long-prompt", "short-prompt"])
def test_pd_policy_runs_a_prefill_and_a_decode_replica(tmp_path: Path, workload: str) -> None:
    results = compare(
        tmp_path, workload, "--policies", "pd",
        "-W", "num_requests=4", "-W", "input_len=600", "-W", "output_len=4",
    )  # fmt: skip
    (pd,) = results
    assert pd["requests"] == 4
    # every request's prompt went through prefill-0 and was decoded on decode-1
    assert pd["replica_requests"] == {"prefill-0": 4.0, "decode-1": 4.0}
    assert pd["itl_p99_s"] is not None
    endpoints = yaml.safe_load((tmp_path / workload / "runs" / "pd" / "endpoints.yaml").read_text())
    assert [e["labels"]["llm-d.ai/role"] for e in endpoints] == ["prefill", "decode"]


def test_cpu_tier_policies_give_replicas_a_cpu_tier(tmp_path: Path) -> None:
    results = compare(
        tmp_path,
        "memory-pressure",
        "--num-gpu-blocks", "60", "--cpu-offload-blocks", "400",
        "--policies", "llm-d-default+cpu-tier,precise+cpu-tier",
        "-W", "num_groups=4", "-W", "prompts_per_group=2", "-W", "system_prompt_len=400",
        "-W", "question_len=10", "-W", "output_len=2",
    )  # fmt: skip
    by_policy = {r["policy"]: r for r in results}
    assert set(by_policy) == {"llm-d-default+cpu-tier", "precise+cpu-tier"}
    assert all(r["requests"] == 8 for r in results)
    # no round-robin in the run: the report compares against the first policy, ITL p99 too
    report = (tmp_path / "memory-pressure" / "report.md").read_text()
    assert "Against llm-d-default+cpu-tier:\n- precise+cpu-tier: " in report
    assert "ITL p99" in report.split("Against", 1)[1]
    assert (tmp_path / "memory-pressure" / "itl_cdf.png").read_bytes()[:4] == b"\x89PNG"
