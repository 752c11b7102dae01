"""``kvgate config check|policies|show-policy`` run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import kvgate
from kvgate.cli import main
from kvgate.config.policies import POLICY_NAMES, policy_config_text
from support.procs import kvgate_cmd

PACKAGED = Path(kvgate.__file__).parent / "data" / "examples" / "llm-inference-service.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kvgate_cmd(*args), capture_output=True, text=True, timeout=60)


def test_check_prints_the_resolved_seed_config() -> None:
    proc = run("config", "check", str(PACKAGED))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0] == (
        f"{PACKAGED}: ok (LLMInferenceService my-llmd-deployment/qwen-model, model "
        "Qwen/Qwen3-0.6B, 1 replica(s), scheduler config from --config-text)"
    )
    assert "profile handler: single-profile-handler (single-profile-handler)\n" in out
    assert "      queue-scorer                 weight 2\n" in out
    assert "      kv-cache-utilization-scorer  weight 2\n" in out
    assert "      prefix-cache-scorer          weight 3\n" in out
    assert "    picker: max-score-picker  [added by default]\n" in out
    assert "      lruCapacityPerServer: 31250  (default)\n" in out
    assert "      maxNumOfEndpoints: 1  (default)\n" in out
    assert (
        "saturation detector: queueDepthThreshold=5 kvCacheUtilThreshold=0.8 "
        "metricsStalenessThreshold=200ms\n"
    ) in out
    # the course's file uses GIE's apiVersion, which llm-d reports as deprecated
    assert proc.stderr == (
        f"warning: {PACKAGED}: apiVersion inference.networking.x-k8s.io/v1alpha1 is "
        "deprecated (llm-d); use llm-d.ai/v1 (llm-d.ai/v1alpha1 is accepted too)\n"
    )


def test_check_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n  paramters: {}\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: prefix-cache-scorer\n"
    )
    proc = run("config", "check", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: {path}:5:3: plugins[queue-scorer].paramters: unknown field; did you mean "
        "'parameters'? (known: name, type, parameters)",
        f"error: {path}:9:5: schedulingProfiles[default].plugins[0].pluginRef: unknown plugin "
        "'prefix-cache-scorer' (known: queue-scorer)",
    ]


def test_check_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text("apiVersion: llm-d.ai/v1alpha1\nkind: [EndpointPickerConfig\n")
    proc = run("config", "check", str(path))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {path}:3:1: YAML syntax error: ")


def test_check_json_output_of_a_policy() -> None:
    proc = run("config", "check", "--policy", "least-queue", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["profiles"][0]["scorers"] == [{"pluginRef": "queue-scorer", "weight": 1}]
    assert data["handler"] == "single-profile-handler"


def test_policies_and_show_policy(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (cli.main is what the console script calls); the subprocess path is above.
    assert main(["config", "policies"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(POLICY_NAMES)

    assert main(["config", "show-policy", "llm-d-default"]) == 0
    assert capsys.readouterr().out == policy_config_text("llm-d-default")

    assert main(["config", "show-policy", "fastest"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: unknown policy 'fastest' (known: random, round-robin,"
    )
