"""``kvgate config check --strict``: names every difference from llm-d, exit 1 when any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kvgate.config import load_picker_config
from kvgate.config.strict import strict_differences

V1 = "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n"
PARSER = "requestHandler: {parsers: [{pluginRef: openai-parser}]}\n"
NO_METRICS = "dataLayer: {injectDefaults: false}\n"


def differences(text: str) -> list[str]:
    return strict_differences(load_picker_config(text=text, env={}))


def test_a_config_kvgate_runs_as_llm_d_has_no_differences() -> None:
    text = V1 + "plugins: [{type: queue-scorer}, {type: openai-parser}]\n" + PARSER + NO_METRICS
    assert differences(text) == []


def test_aliases_kvgate_only_types_and_data_layer_differences_are_named() -> None:
    text = (
        V1
        + "plugins: [{type: kv-cache-scorer}, {type: round-robin-picker}, {type: openai-parser}]\n"
        + PARSER
    )
    got = differences(text)
    assert (
        "plugins[kv-cache-scorer]: type 'kv-cache-scorer' runs as kvgate's "
        "'kv-cache-utilization-scorer'"
    ) in got
    assert any(
        line.startswith("plugins[round-robin-picker]: type 'round-robin-picker' is kvgate's own")
        for line in got
    )
    assert any("vllm:gpu_cache_usage_perc" in line for line in got)


def test_cli_strict_exits_1_and_lists_differences(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(V1 + "plugins: [{type: kv-cache-scorer}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kvgate", "config", "check", "--strict", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"strict: {path}: 3 difference(s) from llm-d:" in proc.stdout
    assert "requestHandler: no parsers configured" in proc.stdout
    plain = subprocess.run(
        [sys.executable, "-m", "kvgate", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plain.returncode == 0 and "strict:" not in plain.stdout


def test_plugins_that_run_differently_from_llm_d_say_how() -> None:
    plugins = (
        "plugins: [{type: burst-prefix-cache-producer}, {type: p2p-source-producer},"
        " {type: destination-endpoint-served-verifier}, {type: token-producer,"
        " parameters: {vllm: {url: 'http://render:8000'}}}, {type: openai-parser}]\n"
    )
    found = differences(V1 + plugins + PARSER + NO_METRICS)
    for name, words in (
        ("burst-prefix-cache-producer", "assigns each window online"),
        ("p2p-source-producer", "every cached block counts"),
        ("destination-endpoint-served-verifier", "forwarded the attempt to"),
        ("token-producer", "vllm: not contacted"),
    ):
        assert any(line.startswith(f"plugins[{name}]: ") and words in line for line in found)


def test_a_prefix_scorer_on_its_own_index_is_named_for_llm_d_configs_only() -> None:
    """llm-d's router feeds a producer-less prefix-cache-scorer from an added
    approx-prefix-cache-producer; kvgate keeps GIE's per-scorer index instead."""
    plugins = "plugins: [{type: prefix-cache-scorer}, {type: openai-parser}]\n"
    got = differences(V1 + plugins + PARSER + NO_METRICS)
    assert len(got) == 1 and got[0].startswith(
        "plugins[prefix-cache-scorer]: names no prefix producer and none is named "
        "approx-prefix-cache-producer: kvgate keeps the scorer's own approximate index"
    )
    with_producer = "plugins: [{type: prefix-cache-scorer}, {type: approx-prefix-cache-producer}"
    assert (
        differences(V1 + with_producer + ", {type: openai-parser}]\n" + PARSER + NO_METRICS) == []
    )
    gie = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    gie_plugins = "plugins: [{type: prefix-cache-scorer}]\n"
    assert not any("prefix-cache-scorer" in line for line in differences(gie + gie_plugins))
