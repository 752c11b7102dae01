"""Each EndpointPickerConfig generation loads its own shape, and each rename between
generations is refused with one line saying what to write instead."""

from __future__ import annotations

import pytest

from kvgate.config import load_picker_config
from kvgate.config.generations import GENERATIONS, GIE, GIE_DOCS, LLMD_V1, LLMD_V1ALPHA1
from kvgate.endpoints.promtext import MetricSpec
from kvgate.errors import ConfigError

BODY = "kind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n"


def load(api_version: str, extra: str = ""):  # type: ignore[no-untyped-def]
    return load_picker_config(text=f"apiVersion: {api_version}\n{BODY}{extra}", env={})


def problems(api_version: str, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(api_version, extra)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


@pytest.mark.parametrize("api_version", list(GENERATIONS))
def test_every_generation_loads_a_minimal_config(api_version: str) -> None:
    config = load(api_version)
    assert config.api_version == api_version
    assert config.data_layer is not None and config.data_layer.metrics is not None
    assert config.data_layer.metrics.injected  # llm-d's injected default metrics source


def test_deprecation_notices_are_warnings_and_v1_has_none() -> None:
    assert load(LLMD_V1).warnings == ()
    (notice,) = load(LLMD_V1ALPHA1).warnings
    assert notice.startswith("apiVersion llm-d.ai/v1alpha1 is deprecated (llm-d); use llm-d.ai/v1")
    assert "deprecated" in load(GIE).warnings[0]
    assert "reference docs" in load(GIE_DOCS).warnings[0]


def test_data_is_gie_only_and_needs_its_gate() -> None:
    text = (
        f"apiVersion: {GIE}\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: metrics-data-source, name: m}]\n"
        "data:\n  sources: [{pluginRef: m}]\n"
    )
    assert load_picker_config(text=text + "featureGates: [dataLayer]\n", env={}).data_layer
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=text, env={})
    assert [p.message for p in info.value.problems] == [
        "allowed only with the dataLayer feature gate (add it to featureGates)"
    ]
    assert problems(LLMD_V1, "data: {}\n") == [
        f"data: renamed to 'dataLayer' (GIE v1.5 and llm-d.ai) (apiVersion {LLMD_V1})"
    ]


def test_v1_renames_discovery_and_cross_replica() -> None:
    extra = "dataLayer:\n  discovery: {pluginRef: f}\n  crossReplicaSyncInterval: 1s\n"
    got = problems(LLMD_V1, extra)
    assert (
        "dataLayer.crossReplicaSyncInterval: renamed in llm-d.ai/v1: write "
        f"dataLayer.crossReplica.syncInterval (apiVersion {LLMD_V1})"
    ) in got
    assert (
        "dataLayer.discovery.pluginRef: renamed in llm-d.ai/v1: write "
        f"dataLayer.discovery.endpoints.pluginRef (apiVersion {LLMD_V1})"
    ) in got
    back = problems(LLMD_V1ALPHA1, "dataLayer:\n  crossReplica: {syncInterval: 1s}\n")
    assert back[0].startswith("dataLayer.crossReplica: is the llm-d.ai/v1 form")


def test_discovery_and_cross_replica_are_refused_with_the_reason() -> None:
    got = problems(LLMD_V1, "dataLayer:\n  discovery: {endpoints: {pluginRef: f}}\n")
    assert got == [
        "dataLayer.discovery: kvgate has no discovery plugins: endpoints come from "
        "--endpoint, --endpoints-file or the InferencePool watch"
    ]
    got = problems(LLMD_V1ALPHA1, "dataLayer:\n  crossReplicaSyncerPluginRef: s\n")
    assert got == [
        "dataLayer.crossReplicaSyncerPluginRef: kvgate runs one scheduler replica; it has no "
        "cross-replica state sync"
    ]


def test_feature_gates_per_generation() -> None:
    assert load(GIE, "featureGates: [prepareDataPlugins]\n").feature_gates == {"prepareDataPlugins"}
    assert problems(LLMD_V1, "featureGates: [prepareDataPlugins]\n") == [
        f"featureGates[0]: unknown feature gate 'prepareDataPlugins' in apiVersion {LLMD_V1} "
        "(known: dataLayer, flowControl, enableLegacyMetrics)"
    ]
    # llm-d-router's sim-e-p-d deploy config set it under v1alpha1
    assert load(LLMD_V1ALPHA1, "featureGates: [prepareDataPlugins]\n").feature_gates == {
        "prepareDataPlugins"
    }


def test_enable_legacy_metrics_turns_the_data_layer_off() -> None:
    config = load(LLMD_V1, "featureGates: [enableLegacyMetrics]\n")
    assert config.data_layer is not None
    assert config.data_layer.legacy_metrics and config.data_layer.metrics is None
    assert config.data_layer.scraper_kwargs() == {}
    assert problems(LLMD_V1, "featureGates: [enableLegacyMetrics]\ndataLayer: {}\n") == [
        "dataLayer: the enableLegacyMetrics feature gate turns the data layer off (llm-d "
        "skips this section); remove the gate or the section"
    ]


def test_metrics_source_and_extractor_configure_the_scraper() -> None:
    text = f"""apiVersion: {LLMD_V1}
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: metrics-data-source
  parameters: {{scheme: https, path: /m, port: 9100, insecureSkipVerify: false, interval: 1s}}
- type: core-metrics-extractor
  parameters:
    defaultEngine: my-engine
    engineConfigs:
    - name: my-engine
      queuedRequestsSpec: "q{{status=waiting}}"
      runningRequestsSpec: r
      kvUsageSpec: kv
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{{pluginRef: core-metrics-extractor}}]
"""
    config = load_picker_config(text=text, env={})
    assert config.data_layer is not None
    kwargs = config.data_layer.scraper_kwargs()
    assert (kwargs["scheme"], kwargs["metrics_path"], kwargs["metrics_port"]) == (
        "https",
        "/m",
        9100,
    )
    assert kwargs["verify_tls"] is True and kwargs["interval_s"] == 1.0
    assert kwargs["names"].queued == MetricSpec("q", (("status", "waiting"),))
    metrics = config.data_layer.metrics
    assert metrics is not None
    assert (
        metrics.names_for({"llm-d.ai/engine-type": "sglang"}).queued.name == "sglang:num_queue_reqs"
    )
    assert metrics.names_for({"inference.networking.k8s.io/engine-type": "vllm"}).queued.name == (
        "vllm:num_requests_waiting"
    )


def test_inject_defaults_false_turns_metrics_off_and_unwired_plugins_are_errors() -> None:
    config = load(LLMD_V1, "dataLayer: {injectDefaults: false}\n")
    assert config.data_layer is not None and config.data_layer.metrics is None
    assert config.data_layer.scraper_kwargs() == {"collect_metrics": False}
    text = f"apiVersion: {LLMD_V1}\n" + BODY.replace(
        "]\n", ", {type: endpoint-notification-source}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=text, env={})
    assert [p.message for p in info.value.problems] == [
        "data-layer plugin is declared but not wired into dataLayer.sources, so it would do "
        "nothing; wire it or remove it"
    ]


def test_parser_and_request_handler() -> None:
    text = f"apiVersion: {LLMD_V1ALPHA1}\n" + BODY.replace("]\n", ", {type: openai-parser}]\n")
    config = load_picker_config(
        text=text + "requestHandler: {parsers: [{pluginRef: openai-parser}]}\n", env={}
    )
    assert config.request_handler is not None
    assert config.request_handler.parsers == ("openai-parser",)
    config = load_picker_config(text=text + "parser: {pluginRef: openai-parser}\n", env={})
    assert any("top-level 'parser' is deprecated" in w for w in config.warnings)
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=text, env={})
    assert info.value.problems[0].message.startswith("parser is declared but not listed")
    assert problems(LLMD_V1, "requestHandler: {parsers: [{pluginRef: queue-scorer}]}\n") == [
        "requestHandler.parsers[0].pluginRef: plugin 'queue-scorer' is not a parser "
        "(kvgate's: openai-parser, passthrough-parser, vertexai-parser, vllmgrpc-parser)"
    ]
