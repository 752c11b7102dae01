"""EndpointPickerConfig loading: the seed config, llm-d's defaulting rules, weights, JSON, and
every common mistake's error message, word for word."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.config.policies import POLICY_NAMES, policy_config_text
from kvgate.errors import ConfigError
from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import default_registry
from kvgate.scheduling.types import Endpoint, Metrics, Request

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

SEED_CONFIG = (
    HEADER
    + """plugins:
- type: single-profile-handler
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""
)


def errors(text: str, source: str = "epp.yaml") -> list[str]:
    """The problems of a config that must fail, as the one-line strings the CLI prints."""
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=text, source_name=source)
    return [str(p) for p in info.value.problems]


def known_types() -> str:
    return ", ".join(default_registry().known_types())


# ---- the seed and the defaulting rules ---------------------------------------------------


def test_seed_config_resolves_to_one_profile_with_weights_and_an_added_picker() -> None:
    config = load_picker_config(text=SEED_CONFIG, source_name="seed.yaml")
    assert config.handler == "single-profile-handler"
    (profile,) = config.profiles
    assert profile.name == "default"
    assert [(r.name, r.weight) for r in profile.scorers] == [
        ("queue-scorer", 2),
        ("kv-cache-utilization-scorer", 2),
        ("prefix-cache-scorer", 3),
    ]
    assert profile.picker == "max-score-picker"
    assert profile.picker_added_by_default
    picker = config.plugin("max-score-picker")
    assert picker.added_by_default and "picker" in picker.roles
    prefix = config.plugin("prefix-cache-scorer")
    assert {"scorer", "pre-request"} <= prefix.roles
    assert prefix.effective_parameters["lruCapacityPerServer"] == 31250


def test_no_profiles_makes_a_default_profile_with_every_filter_scorer_and_picker() -> None:
    config = load_picker_config(
        text=HEADER
        + "plugins:\n- type: decode-filter\n- type: queue-scorer\n"
        + "- type: load-aware-scorer\n- type: random-picker\n"
    )
    (profile,) = config.profiles
    assert profile.name == "default" and profile.added_by_default
    assert profile.filters == ("decode-filter",)
    assert [(r.name, r.weight) for r in profile.scorers] == [
        ("queue-scorer", 1),
        ("load-aware-scorer", 1),
    ]
    assert profile.picker == "random-picker" and not profile.picker_added_by_default
    assert config.handler == "single-profile-handler"
    assert config.plugin("single-profile-handler").added_by_default


def test_empty_plugin_list_still_yields_a_working_scheduler() -> None:
    config = load_picker_config(text=HEADER + "plugins: []\n")
    assert [p.name for p in config.plugins] == ["max-score-picker", "single-profile-handler"]
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    endpoints = [Endpoint(f"e{i}", "127.0.0.1", 8000 + i) for i in range(3)]
    result = scheduler.schedule(Request("r1", "m", prompt="hi"), endpoints)
    assert result.target in endpoints


def test_profile_without_picker_gets_the_first_declared_picker() -> None:
    config = load_picker_config(
        text=HEADER
        + """plugins:
- type: queue-scorer
- type: weighted-random-picker
- type: random-picker
schedulingProfiles:
- name: main
  plugins:
  - pluginRef: queue-scorer
"""
    )
    assert config.profiles[0].picker == "weighted-random-picker"
    assert config.profiles[0].picker_added_by_default
    assert not any(p.added_by_default and p.type == "max-score-picker" for p in config.plugins)


def test_two_profiles_with_a_multi_profile_handler() -> None:
    config = load_picker_config(
        text=HEADER
        + """plugins:
- type: prefill-filter
- type: decode-filter
- type: prefix-cache-scorer
- type: pd-profile-handler
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: prefix-cache-scorer
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: prefix-cache-scorer
"""
    )
    assert config.handler == "pd-profile-handler"
    assert [p.picker for p in config.profiles] == ["max-score-picker", "max-score-picker"]
    # one max-score-picker is added and shared by both profiles
    assert [p.name for p in config.plugins].count("max-score-picker") == 1


def test_weights_int_float_and_unset() -> None:
    config = load_picker_config(
        text=HEADER
        + """plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: load-aware-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 0.5
  - pluginRef: load-aware-scorer
"""
    )
    weights = {r.name: r.weight for r in config.profiles[0].scorers}
    assert weights == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 0.5,
        "load-aware-scorer": 1,
    }
    assert isinstance(weights["queue-scorer"], int)
    assert isinstance(weights["kv-cache-utilization-scorer"], float)
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    scored = {ws.scorer.name: ws.weight for ws in scheduler.profiles["default"].scorers}
    assert scored == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 0.5,
        "load-aware-scorer": 1.0,
    }


def test_weights_decide_the_pick() -> None:
    """kv-cache weight 3 beats queue weight 1: the emptier cache wins despite a longer queue."""
    text = (
        HEADER
        + """plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: {q}
  - pluginRef: kv-cache-utilization-scorer
    weight: {kv}
"""
    )
    busy_queue = Endpoint("a", "10.0.0.1", 8000, metrics=Metrics(waiting_queue_size=5))
    busy_cache = Endpoint("b", "10.0.0.2", 8000, metrics=Metrics(kv_cache_usage_percent=0.9))
    for q, kv, winner in ((1, 3, "a"), (3, 1, "b")):
        config = load_picker_config(text=text.format(q=q, kv=kv))
        scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
        result = scheduler.schedule(Request("r", "m", prompt="x"), [busy_queue, busy_cache])
        assert result.target.name == winner


def test_json_form_and_llm_d_api_group() -> None:
    doc = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "queue-scorer", "name": "q"}, {"type": "kv-cache-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "q", "weight": 2}, {"pluginRef": "kv-cache-scorer"}],
            }
        ],
    }
    config = load_picker_config(text=json.dumps(doc), source_name="epp.json")
    assert config.api_version == "llm-d.ai/v1alpha1"
    assert [(r.name, r.weight) for r in config.profiles[0].scorers] == [
        ("q", 2),
        ("kv-cache-scorer", 1),
    ]
    alias = config.plugin("kv-cache-scorer")
    assert alias.canonical_type == "kv-cache-utilization-scorer"


def test_load_from_file_and_default(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(SEED_CONFIG)
    config = load_picker_config(path)
    assert config.source == str(path)
    default = load_picker_config()
    assert [(r.name, r.weight) for r in default.profiles[0].scorers] == [
        ("queue-scorer", 2),
        ("kv-cache-utilization-scorer", 2),
        ("prefix-cache-scorer", 3),
    ]


def test_saturation_detector_defaults_thresholds_and_env_overrides() -> None:
    assert load_picker_config(text=HEADER, env={}).saturation_detector.queue_depth_threshold == 5
    config = load_picker_config(
        text=HEADER
        + "saturationDetector:\n  queueDepthThreshold: 9\n  kvCacheUtilThreshold: 1.5\n"
        + "  metricsStalenessThreshold: 1m30s\n",
        env={},
    )
    sd = config.saturation_detector
    assert (sd.queue_depth_threshold, sd.kv_cache_util_threshold) == (9, 0.8)  # 1.5 ignored
    assert sd.metrics_staleness_threshold_s == 90.0
    env = {
        "SD_QUEUE_DEPTH_THRESHOLD": "7",
        "SD_KV_CACHE_UTIL_THRESHOLD": "0.5",
        "SD_METRICS_STALENESS_THRESHOLD": "50ms",
    }
    sd = load_picker_config(text=HEADER, env=env).saturation_detector
    assert (sd.queue_depth_threshold, sd.kv_cache_util_threshold) == (7, 0.5)
    assert sd.metrics_staleness_threshold_s == pytest.approx(0.05)
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=HEADER, env={"SD_QUEUE_DEPTH_THRESHOLD": "lots"})
    assert [str(p) for p in info.value.problems] == [
        "environment: SD_QUEUE_DEPTH_THRESHOLD: expected an integer, got 'lots'"
    ]


def test_flow_control_saturation_detector_without_the_gate_is_the_legacy_detector() -> None:
    # llm-d-router honours flowControl.saturationDetector with the gate off (legacy admission)
    detector = "plugins:\n- type: utilization-detector\n"
    config = load_picker_config(
        text=HEADER + detector + "flowControl:\n  saturationDetector:\n"
        "    pluginRef: utilization-detector\n",
        env={},
    )
    assert config.flow_control is None
    assert config.saturation_detector.plugin_ref == "utilization-detector"
    assert errors(
        HEADER + detector + "flowControl:\n  saturationDetector: {pluginRef: utilization-detector}"
        "\n  maxRequests: 5\n"
    ) == ["epp.yaml:5:1: flowControl: allowed only with the flowControl feature gate (add it to "
          "featureGates)"]  # fmt: skip


def test_gie_data_section_and_parser_act() -> None:
    config = load_picker_config(
        text=HEADER
        + """featureGates: [dataLayer]
plugins:
- type: queue-scorer
- type: metrics-data-source
  parameters: {path: /stats}
- type: openai-parser
data:
  sources:
  - pluginRef: metrics-data-source
parser: {pluginRef: openai-parser}
"""
    )
    assert config.feature_gates == {"dataLayer"}
    assert config.data_layer is not None and config.data_layer.metrics is not None
    assert config.data_layer.metrics.source.path == "/stats"
    assert config.request_handler is not None
    assert config.request_handler.parsers == ("openai-parser",)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_builtin_policy_loads_and_builds(name: str) -> None:
    config = load_picker_config(text=policy_config_text(name), source_name=name)
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    assert list(scheduler.profiles) == ["default"]


# ---- common mistakes, word for word -----------------------------------------------------


def test_unknown_field_suggests_the_known_one() -> None:
    assert errors(HEADER + "plugins:\n- type: queue-scorer\n  paramters: {}\n") == [
        "epp.yaml:5:3: plugins[queue-scorer].paramters: unknown field; did you mean 'parameters'? "
        "(known: name, type, parameters)"
    ]
    assert errors(HEADER + "schedulingProfile: []\n") == [
        "epp.yaml:3:1: schedulingProfile: unknown field; did you mean 'schedulingProfiles'? "
        "(known: apiVersion, kind, plugins, schedulingProfiles, featureGates, "
        "saturationDetector, flowControl, data, dataLayer, parser, requestHandler)"
    ]


def test_unknown_plugin_type_lists_the_known_ones() -> None:
    assert errors(HEADER + "plugins:\n- type: prefix-scorer\n") == [
        f"epp.yaml:4:3: plugins[prefix-scorer].type: unknown plugin type 'prefix-scorer' "
        f"(known: {known_types()})"
    ]


def test_duplicate_plugin_name() -> None:
    assert errors(HEADER + "plugins:\n- type: queue-scorer\n- type: queue-scorer\n") == [
        "epp.yaml:5:3: plugins[1].name: duplicate plugin name 'queue-scorer' (first declared at "
        "plugins[0]); give one of them a distinct 'name'"
    ]


def test_dangling_plugin_ref() -> None:
    text = SEED_CONFIG.replace("pluginRef: prefix-cache-scorer", "pluginRef: prefix-scorer")
    assert errors(text) == [
        "epp.yaml:15:5: schedulingProfiles[default].plugins[2].pluginRef: unknown plugin "
        "'prefix-scorer' (known: single-profile-handler, queue-scorer, "
        "kv-cache-utilization-scorer, prefix-cache-scorer)"
    ]


def test_bad_weight_type() -> None:
    assert errors(SEED_CONFIG.replace("weight: 3", "weight: high")) == [
        "epp.yaml:16:5: schedulingProfiles[default].plugins[2].weight: expected a number "
        "(int or float), got string 'high'"
    ]
    assert errors(SEED_CONFIG.replace("weight: 3", "weight: true")) == [
        "epp.yaml:16:5: schedulingProfiles[default].plugins[2].weight: expected a number "
        "(int or float), got boolean true"
    ]


def test_two_pickers_in_one_profile() -> None:
    text = (
        HEADER
        + """plugins:
- type: random-picker
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
  - pluginRef: max-score-picker
"""
    )
    assert errors(text) == [
        "epp.yaml:10:5: schedulingProfiles[default].plugins[1].pluginRef: profile 'default' already "
        "has picker 'random-picker'; a profile has exactly one picker"
    ]


def test_two_pickers_without_profiles() -> None:
    assert errors(HEADER + "plugins:\n- type: random-picker\n- type: max-score-picker\n") == [
        "epp.yaml:5:3: plugins[max-score-picker].type: a second picker for the 'default' profile "
        "(already 'random-picker'); with no schedulingProfiles every picker joins that "
        "profile, and a profile has exactly one picker: declare schedulingProfiles"
    ]


def test_two_profile_handlers() -> None:
    text = HEADER + "plugins:\n- type: single-profile-handler\n- type: pd-profile-handler\n"
    assert errors(text) == [
        "epp.yaml:5:3: plugins[pd-profile-handler].type: a second profile handler "
        "('single-profile-handler' is the first); exactly one profile handler is allowed"
    ]


def test_single_profile_handler_with_two_profiles() -> None:
    text = (
        HEADER
        + """plugins:
- type: single-profile-handler
- type: queue-scorer
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: queue-scorer}]
"""
    )
    assert errors(text) == [
        "epp.yaml:6:1: schedulingProfiles: single-profile-handler 'single-profile-handler' runs "
        "exactly one profile, but 2 are configured (prefill, decode); use a multi-profile "
        "handler such as pd-profile-handler"
    ]


def test_two_profiles_and_no_handler() -> None:
    text = HEADER + "schedulingProfiles:\n- name: a\n- name: b\n"
    assert errors(text) == [
        "epp.yaml:1:1: plugins: 2 scheduling profiles need a profile handler plugin "
        "(e.g. pd-profile-handler); single-profile-handler is added only for one profile"
    ]


def test_duplicate_profile_name() -> None:
    text = (
        HEADER + "plugins:\n- type: pd-profile-handler\nschedulingProfiles:\n- name: a\n- name: a\n"
    )
    assert errors(text) == [
        "epp.yaml:7:3: schedulingProfiles[1].name: duplicate profile name 'a' "
        "(first declared at schedulingProfiles[0])"
    ]


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = HEADER + "plugins:\n- type: queue-scorer\n  name: q: x\n"
    assert errors(text) == ["epp.yaml:5:10: YAML syntax error: mapping values are not allowed here"]


def test_yaml_duplicate_key_is_an_error() -> None:
    text = HEADER + "plugins:\n- type: queue-scorer\n  type: kv-cache-scorer\n"
    assert errors(text) == [
        "epp.yaml:5:3: YAML syntax error: duplicate key 'type' (while constructing a mapping)"
    ]


def test_json_syntax_error_has_line_and_column() -> None:
    assert errors('{"apiVersion": "llm-d.ai/v1alpha1",\n "kind": }', "epp.json") == [
        "epp.json:2:10: JSON syntax error: Expecting value"
    ]


def test_wrong_api_version_and_kind() -> None:
    assert errors("apiVersion: v1\nkind: ConfigMap\n") == [
        "epp.yaml:1:1: apiVersion: expected 'inference.networking.x-k8s.io/v1alpha1' or "
        "'config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1' or "
        "'llm-d.ai/v1alpha1' or 'llm-d.ai/v1', got string 'v1'",
        "epp.yaml:2:1: kind: expected 'EndpointPickerConfig', got string 'ConfigMap'",
    ]
    assert errors("plugins: []\n") == [
        "epp.yaml:1:1: apiVersion: required field is missing; expected "
        "'inference.networking.x-k8s.io/v1alpha1' or "
        "'config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1' or "
        "'llm-d.ai/v1alpha1' or 'llm-d.ai/v1'",
        "epp.yaml:1:1: kind: required field is missing; expected 'EndpointPickerConfig'",
    ]


def test_bad_plugin_parameters() -> None:
    text = HEADER + "plugins:\n- type: load-aware-scorer\n  parameters:\n    threshold: many\n"
    assert errors(text) == [
        "epp.yaml:6:5: plugins[load-aware-scorer].parameters.threshold: expected an integer, "
        "got string 'many'"
    ]
    text = HEADER + "plugins:\n- type: queue-scorer\n  parameters: {threshold: 3}\n"
    assert errors(text) == [
        "epp.yaml:5:16: plugins[queue-scorer].parameters.threshold: unknown parameter (known: none)"
    ]


def test_wrong_types_and_unknown_feature_gate() -> None:
    assert errors(HEADER + "plugins: {type: queue-scorer}\nfeatureGates: [speed]\n") == [
        "epp.yaml:4:16: featureGates[0]: unknown feature gate 'speed' in apiVersion "
        "inference.networking.x-k8s.io/v1alpha1 (known: dataLayer, flowControl, "
        "prepareDataPlugins, enableLegacyMetrics)",
        "epp.yaml:3:1: plugins: expected a list, got a mapping",
    ]


def test_data_needs_the_data_layer_gate() -> None:
    assert errors(HEADER + "data: {sources: []}\n") == [
        "epp.yaml:3:1: data: allowed only with the dataLayer feature gate (add it to featureGates)"
    ]


def test_all_problems_are_reported_at_once() -> None:
    text = (
        HEADER
        + """plugins:
- type: queue-scorer
  paramters: {}
- type: prefix-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: "2"
  - pluginRef: kv-cache-utilization-scorer
"""
    )
    assert len(errors(text)) == 4


def test_request_handler_parser_one_parser_shape() -> None:
    # llm-d-router's test config between the top-level parser and requestHandler.parsers
    text = (
        HEADER + "plugins:\n- type: openai-parser\n- type: random-picker\n"
        "requestHandler:\n  parser: {pluginRef: openai-parser}\n"
    )
    assert load_picker_config(text=text, env={}).request_handler.parsers == ("openai-parser",)
    assert errors(text + "  parsers:\n  - pluginRef: openai-parser\n") == [
        "epp.yaml:7:3: requestHandler.parser: give either 'parser' or 'parsers', not both"
    ]


def test_a_fairness_policy_is_never_made_a_profiles_picker() -> None:
    # its pick(band) is flow control's; the llm-d flow-control guide declares one and no picker
    text = (
        HEADER + "featureGates: [flowControl]\nplugins:\n- type: round-robin-fairness-policy\n"
        "- type: queue-scorer\nflowControl:\n  defaultPriorityBand:\n"
        "    fairnessPolicyRef: round-robin-fairness-policy\n"
    )
    config = load_picker_config(text=text, env={})
    assert config.profiles[0].picker == "max-score-picker"
