"""The EndpointPickerConfig sections besides plugins and profiles: featureGates,
saturationDetector (GIE's defaults, SD_* environment overrides, Go durations) and flowControl.
The data layer and request handler are in :mod:`kvgate.config.datalayer`."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from kvgate.config.documents import describe
from kvgate.config.fields import (
    Problems,
    as_list,
    check_fields,
    optional_mapping,
    required_str,
)
from kvgate.config.generations import FEATURE_GATES as FEATURE_GATES  # re-exported
from kvgate.config.model import SaturationDetectorConfig
from kvgate.durations import format_duration as format_duration  # re-exported
from kvgate.durations import parse_duration as parse_duration  # re-exported

if TYPE_CHECKING:  # kvgate.flowcontrol.config imports kvgate.config: import it when called
    from kvgate.flowcontrol.config import FlowControlConfig

_SD_FIELDS = (
    "queueDepthThreshold",
    "kvCacheUtilThreshold",
    "metricsStalenessThreshold",
    "pluginRef",  # newer shape: a detector plugin instead of thresholds
)

#: Environment variables that override ``saturationDetector`` (as in GIE).
SD_ENV_QUEUE = "SD_QUEUE_DEPTH_THRESHOLD"
SD_ENV_KV = "SD_KV_CACHE_UTIL_THRESHOLD"
SD_ENV_STALENESS = "SD_METRICS_STALENESS_THRESHOLD"


def saturation_detector(
    problems: Problems,
    value: Any,
    env: Mapping[str, str] | None,
    plugins: Mapping[str, object] | None = None,
) -> SaturationDetectorConfig:
    """The top-level ``saturationDetector``: GIE v1.3's thresholds (and their SD_* overrides)
    or, in the newer shape, ``pluginRef`` naming a detector plugin (deprecated in llm-d-router
    in favour of ``flowControl.saturationDetector``)."""
    defaults = SaturationDetectorConfig()
    queue = defaults.queue_depth_threshold
    kv = defaults.kv_cache_util_threshold
    staleness = defaults.metrics_staleness_threshold_s
    section = optional_mapping(problems, "saturationDetector", value) or {}
    check_fields(problems, "saturationDetector", section, _SD_FIELDS)
    from kvgate.flowcontrol.config import saturation_detector_ref

    plugin_ref = (
        saturation_detector_ref(
            problems,
            "saturationDetector",
            {"pluginRef": section["pluginRef"]},
            _plugin_types(plugins),
        )
        if "pluginRef" in section
        else None
    )
    if plugin_ref is not None and any(f in section for f in _SD_FIELDS[:3]):
        problems.add(
            "saturationDetector.pluginRef",
            "set either pluginRef or the thresholds (put thresholds in the plugin's parameters)",
        )
    q = section.get("queueDepthThreshold")
    if q is not None:
        if isinstance(q, bool) or not isinstance(q, int):
            problems.add(
                "saturationDetector.queueDepthThreshold", f"expected an integer, got {describe(q)}"
            )
        elif q > 0:  # <= 0 means "use the default", as in GIE
            queue = q
    k = section.get("kvCacheUtilThreshold")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int | float):
            problems.add(
                "saturationDetector.kvCacheUtilThreshold", f"expected a number, got {describe(k)}"
            )
        elif 0 < k < 1:  # honoured only strictly between 0 and 1, as in GIE
            kv = float(k)
    st = section.get("metricsStalenessThreshold")
    if st is not None:
        parsed = parse_duration(st) if isinstance(st, str) else None
        if parsed is None:
            problems.add(
                "saturationDetector.metricsStalenessThreshold",
                f"expected a duration such as '200ms' or '1s', got {describe(st)}",
            )
        elif parsed > 0:
            staleness = parsed

    environ = os.environ if env is None else env
    env_problems = Problems("environment")
    if SD_ENV_QUEUE in environ:
        raw = environ[SD_ENV_QUEUE]
        try:
            parsed_q = int(raw)
        except ValueError:
            env_problems.add(SD_ENV_QUEUE, f"expected an integer, got {raw!r}")
        else:
            if parsed_q > 0:
                queue = parsed_q
    if SD_ENV_KV in environ:
        raw = environ[SD_ENV_KV]
        try:
            parsed_k = float(raw)
        except ValueError:
            env_problems.add(SD_ENV_KV, f"expected a number, got {raw!r}")
        else:
            if 0 < parsed_k < 1:
                kv = parsed_k
    if SD_ENV_STALENESS in environ:
        raw = environ[SD_ENV_STALENESS]
        parsed_st = parse_duration(raw)
        if parsed_st is None:
            env_problems.add(SD_ENV_STALENESS, f"expected a duration such as '200ms', got {raw!r}")
        elif parsed_st > 0:
            staleness = parsed_st
    problems.items.extend(env_problems.items)
    return SaturationDetectorConfig(queue, kv, staleness, plugin_ref)


def _plugin_ref(
    problems: Problems, path: str, entry: Mapping[str, Any], plugins: Mapping[str, object]
) -> None:
    name = required_str(problems, path, entry, "pluginRef")
    if name is not None and name not in plugins:
        problems.add(
            f"{path}.pluginRef",
            f"unknown plugin {name!r} (known: {', '.join(plugins) or 'none declared'})",
        )


def flow_control(
    problems: Problems,
    value: Any,
    gates: Collection[str] = (),
    plugins: Mapping[str, object] | None = None,
) -> FlowControlConfig | None:
    """The ``flowControl`` section, typed (kvgate.flowcontrol.config); None unless the
    ``flowControl`` feature gate is on. A section without the gate is an error naming it."""
    from kvgate.flowcontrol.config import FEATURE_GATE as FLOW_CONTROL_GATE
    from kvgate.flowcontrol.config import parse_flow_control

    section = optional_mapping(problems, "flowControl", value)
    if FLOW_CONTROL_GATE not in gates:
        if section is not None:
            problems.add(
                "flowControl",
                f"allowed only with the {FLOW_CONTROL_GATE} feature gate (add it to featureGates)",
            )
        return None
    return parse_flow_control(problems, section or {}, _plugin_types(plugins))


def _plugin_types(plugins: Mapping[str, object] | None) -> dict[str, str]:
    """Declared plugin name -> type, for checking references to flow-control plugins."""
    types: dict[str, str] = {}
    for name, declared in (plugins or {}).items():
        type_name = getattr(declared, "type", None)
        if isinstance(type_name, str):
            types[name] = type_name
    return types


#: llm-d's config-loader tests register this gate (default on) and nothing reads it; kvgate
#: accepts it in every apiVersion so those test configs load, and it acts on nothing, as there
#: (kvgate.plugins.testdoubles).
TEST_FEATURE_GATE = "test-feature-gate"


def feature_gates(
    problems: Problems, value: Any, allowed: tuple[str, ...] = FEATURE_GATES, where: str = ""
) -> list[str]:
    """The gates in ``value``; one outside ``allowed`` (this apiVersion's gates) is a problem."""
    gates: list[str] = []
    for i, gate in enumerate(as_list(problems, "featureGates", value)):
        if not isinstance(gate, str):
            problems.add(f"featureGates[{i}]", f"expected a string, got {describe(gate)}")
        elif gate == TEST_FEATURE_GATE:  # llm-d's test-only gate: kept, turns nothing on
            gates.append(gate)
        elif gate not in allowed:
            problems.add(
                f"featureGates[{i}]",
                f"unknown feature gate {gate!r}{where} (known: {', '.join(allowed)})",
            )
        else:
            gates.append(gate)
    return gates
