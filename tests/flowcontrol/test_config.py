"""flowControl / saturationDetector parsing, both config generations, and building."""

from __future__ import annotations

import pytest

from kvgate.config import load_picker_config
from kvgate.errors import ConfigError
from kvgate.flowcontrol.build import build_detector, build_flow_controller
from kvgate.flowcontrol.config import FlowControlConfig, PriorityBandConfig, parse_quantity
from kvgate.flowcontrol.detectors.concurrency import ConcurrencyDetector
from kvgate.flowcontrol.detectors.utilization import UtilizationDetector
from kvgate.flowcontrol.saturation import ThresholdDetector

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
PLUGINS = "plugins:\n- type: queue-scorer\n"


def load(body: str):  # type: ignore[no-untyped-def]
    return load_picker_config(text=HEADER + body, env={})


def problems(body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(body)
    return [str(p).split(": ", 1)[1] for p in info.value.problems]


def test_gate_off_means_no_flow_control_and_a_section_without_it_is_an_error() -> None:
    assert load(PLUGINS).flow_control is None
    assert problems(PLUGINS + "flowControl: {maxBytes: 10}\n") == [
        "flowControl: allowed only with the flowControl feature gate (add it to featureGates)"
    ]


def test_gate_on_gives_llm_d_defaults() -> None:
    fc = load("featureGates: [flowControl]\n" + PLUGINS).flow_control
    assert fc == FlowControlConfig()
    assert fc.default_request_ttl_s == 60.0 and fc.band(3) == PriorityBandConfig(3)
    assert fc.band(3).max_bytes == 1_000_000_000 and fc.band(3).max_requests == 5000
    assert fc.band(0).fairness_policy == "global-strict-fairness-policy"


def test_older_generation_fields() -> None:
    fc = load(
        "featureGates: [flowControl]\n"
        + PLUGINS
        + """flowControl:
  maxBytes: 1Gi
  maxRequests: 1k
  defaultRequestTTL: 30s
  defaultPriorityBand: {maxRequests: 50}
  priorityBands:
  - {priority: 10, maxBytes: 500M, fairnessPolicyRef: round-robin-fairness-policy}
"""
    ).flow_control
    assert (fc.max_bytes, fc.max_requests, fc.default_request_ttl_s) == (2**30, 1000, 30.0)
    assert fc.band(1).max_requests == 50
    assert fc.band(10) == PriorityBandConfig(10, 500_000_000, 5000, "round-robin-fairness-policy")


def test_newer_generation_fields_and_detector_plugins() -> None:
    config = load(
        "featureGates: [flowControl]\n"
        + PLUGINS
        + """- {type: concurrency-detector, name: cd, parameters: {maxConcurrency: 4}}
- {type: static-usage-limit-policy, name: ul, parameters: {threshold: 0.8}}
- {type: edf-ordering-policy, name: edf}
flowControl:
  noEndpointRequestTTL: 5m
  defaultNegativePriorityBand: {maxRequests: 3}
  usageLimitPolicyPluginRef: ul
  saturationDetector: {pluginRef: cd}
  priorityBands: [{priority: 1, orderingPolicyRef: edf}]
  enableEviction: false
"""
    )
    fc = config.flow_control
    assert fc.ttl_s(pool_empty=True) == 300.0 and fc.ttl_s(pool_empty=False) == 60.0
    assert fc.band(-2).max_requests == 3 and fc.band(2).max_requests == 5000
    assert fc.band(1).ordering_policy == "edf-ordering-policy"
    detector = build_detector(config)
    assert isinstance(detector, ConcurrencyDetector) and detector.max_concurrency == 4
    controller = build_flow_controller(config, list)
    assert controller is not None and controller.usage_limit == 0.8


def test_top_level_detector_shapes() -> None:
    legacy = load(PLUGINS + "saturationDetector: {queueDepthThreshold: 7}\n")
    detector = build_detector(legacy)
    assert isinstance(detector, ThresholdDetector) and detector.queue_depth_threshold == 7
    newer = load(PLUGINS + "saturationDetector: {pluginRef: utilization-detector}\n")
    assert isinstance(build_detector(newer), UtilizationDetector)


def test_errors_name_each_field() -> None:
    got = problems(
        "featureGates: [flowControl]\n"
        + PLUGINS
        + """flowControl:
  maxBytes: lots
  defaultRequestTTL: soon
  usageLimitPolicyPluginRef: queue-scorer
  enableEviction: "yes"
  priorityBands:
  - {priority: 1, fairnessPolicyRef: fair}
  - {priority: 1, maxRequests: -1}
  - {maxBytes: 1}
"""
    )
    assert got == [
        "flowControl.maxBytes: expected a non-negative quantity such as 100, '1k' or '1Gi', got string 'lots'",
        "flowControl.defaultRequestTTL: expected a non-negative duration such as '30s' or '0s', got string 'soon'",
        "flowControl.priorityBands[0].fairnessPolicyRef: unknown fairness policy 'fair' (expected a declared plugin or one of: global-strict-fairness-policy, round-robin-fairness-policy)",
        "flowControl.priorityBands[1].maxRequests: expected a non-negative quantity such as 100, '1k' or '1Gi', got number -1",
        "flowControl.priorityBands[1].priority: duplicate priority 1 (also in priorityBands[0])",
        "flowControl.priorityBands[2].priority: required field is missing; expected an integer",
        "flowControl.usageLimitPolicyPluginRef: plugin 'queue-scorer' has type 'queue-scorer', which is not a usage limit policy (expected one of: static-usage-limit-policy, soft-reflective-ceiling-policy)",
        "flowControl.enableEviction: expected true or false, got string 'yes'",
    ]


def test_a_band_and_a_template_may_set_their_own_ttl() -> None:
    fc = load(
        "featureGates: [flowControl]\n"
        + PLUGINS
        + """flowControl:
  defaultRequestTTL: 30s
  defaultPriorityBand: {defaultRequestTTL: 0s}
  priorityBands:
  - {priority: -1, defaultRequestTTL: 9000s}
  - {priority: 2}
"""
    ).flow_control
    assert fc.band(-1).request_ttl_s == 9000.0 and fc.band(2).request_ttl_s is None
    assert fc.band(7).request_ttl_s == 0.0  # the template's
    assert [fc.ttl_s(pool_empty=False, band=fc.band(p)) for p in (-1, 2, 7)] == [9000, 30, 0]
    assert problems(
        "featureGates: [flowControl]\n"
        + PLUGINS
        + "flowControl:\n  priorityBands:\n  - {priority: 2, defaultRequestTTL: later}\n"
    ) == [
        "flowControl.priorityBands[0].defaultRequestTTL: expected a non-negative duration "
        "such as '30s' or '0s', got string 'later'"
    ]


def test_quantities() -> None:
    assert [parse_quantity(v) for v in (100, "1k", "1Gi", "500M", "1.5k", "1e3")] == [
        100,
        1000,
        2**30,
        500_000_000,
        1500,
        1000,
    ]
    assert parse_quantity("-1") is None and parse_quantity(True) is None
