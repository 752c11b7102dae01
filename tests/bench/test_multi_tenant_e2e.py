"""`kvgate bench compare` end to end on tiny clusters: the multi-tenant workload through
``kvgate serve`` with flow control, and a plain comparison through Envoy + ``kvgate epp``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY_CLUSTER = ["--replicas", "2", "--num-gpu-blocks", "400", "--no-progress"]


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvgate", "bench", "compare", *TINY_CLUSTER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_multi_tenant_through_serve_with_flow_control(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _compare(
        "--workload", "multi-tenant",
        "--policies", "llm-d-default+flow-control",
        "--unloaded",
        "--speed", "1",
        "-W", "duration_s=2", "-W", "capacity_rps=10",
        "-W", "batch_prompt_len=64", "-W", "batch_output_len=8",
        "-W", "interactive_prompt_len=40", "-W", "interactive_output_len=4",
        "-W", "interactive_rate=5", "-W", "batch_sheddable=true",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = list(yaml.safe_load_all((out / "objectives.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"interactive", "batch", "batch-sheddable"}
    results = {r["policy"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(results) == {"llm-d-default+flow-control", "llm-d-default+flow-control (unloaded)"}
    for r in results.values():
        o = r["outcomes"]
        counted = o["ok"] + o["rejected_429"] + o["unavailable_503"]
        assert counted + o["timeouts"] + o["other_errors"] == r["requests"] > 0
        assert o["other_errors"] == 0 and o["timeouts"] == 0
    report = (out / "report.md").read_text()
    assert "| llm-d-default+flow-control | batch |" in report
    assert "| llm-d-default+flow-control (unloaded) | interactive |" in report
    assert "loaded vs" in report and "unloaded" in report


@pytest.mark.envoy
@pytest.mark.slow
def test_compare_through_envoy_and_kvgate_epp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _compare(
        "--front", "epp",
        "--policies", "llm-d-default",
        "--speed", "4",
        "-W", "num_groups=2", "-W", "prompts_per_group=3", "-W", "warmup_per_group=1",
        "-W", "system_prompt_len=200", "-W", "question_len=10", "-W", "output_len=4",
        "--rate", "20",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads((out / "results.json").read_text())
    assert result["requests"] == 6 and result["outcomes"]["ok"] == 6
    assert json.loads((out / "meta.json").read_text())["front"] == "epp"
    # Envoy forwarded every measured request itself, to the replica the EPP picked
    access = (out / "runs" / "llm-d-default" / "logs" / "envoy-access.log").read_text()
    assert access.count('"POST /v1/completions" 200') == 8  # 2 warm-up + 6 measured
