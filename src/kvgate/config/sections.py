"""The EndpointPickerConfig sections besides plugins and profiles: featureGates,
saturationDetector (GIE's defaults, SD_* environment overrides, Go durations), data (only with
the dataLayer gate) and flowControl."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from kvgate.config.documents import describe
from kvgate.config.fields import (
    Problems,
    as_list,
    as_mapping,
    check_fields,
    optional_mapping,
    required_str,
)
from kvgate.config.model import SaturationDetectorConfig

FEATURE_GATES: tuple[str, ...] = ("dataLayer", "flowControl", "prepareDataPlugins")

_SD_FIELDS = ("queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold")
_DATA_FIELDS = ("sources",)
_SOURCE_FIELDS = ("pluginRef", "extractors")
_EXTRACTOR_FIELDS = ("pluginRef",)
_FLOW_CONTROL_FIELDS = (
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "defaultPriorityBand",
    "priorityBands",
)

#: Environment variables that override ``saturationDetector`` (as in GIE).
SD_ENV_QUEUE = "SD_QUEUE_DEPTH_THRESHOLD"
SD_ENV_KV = "SD_KV_CACHE_UTIL_THRESHOLD"
SD_ENV_STALENESS = "SD_METRICS_STALENESS_THRESHOLD"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """A Go duration string (``200ms``, ``1m30s``, ``0``) in seconds, or None if invalid."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if not s:
        return None
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Seconds as a short Go-style duration (``200ms``, ``2s``)."""
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def saturation_detector(
    problems: Problems, value: Any, env: Mapping[str, str] | None
) -> SaturationDetectorConfig:
    defaults = SaturationDetectorConfig()
    queue = defaults.queue_depth_threshold
    kv = defaults.kv_cache_util_threshold
    staleness = defaults.metrics_staleness_threshold_s
    section = optional_mapping(problems, "saturationDetector", value) or {}
    check_fields(problems, "saturationDetector", section, _SD_FIELDS)
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
    return SaturationDetectorConfig(queue, kv, staleness)


def data_section(
    problems: Problems,
    data: Mapping[str, Any],
    gates: list[str],
    plugins: Mapping[str, object],
) -> dict[str, Any] | None:
    if data.get("data") is None:
        return None
    section = as_mapping(problems, "data", data["data"])
    if section is None:
        return None
    if "dataLayer" not in gates:
        problems.add(
            "data", "allowed only with the dataLayer feature gate (add it to featureGates)"
        )
    check_fields(problems, "data", section, _DATA_FIELDS)
    for i, src in enumerate(as_list(problems, "data.sources", section.get("sources"))):
        path = f"data.sources[{i}]"
        if not isinstance(src, dict):
            problems.add(path, f"expected a mapping with 'pluginRef', got {describe(src)}")
            continue
        check_fields(problems, path, src, _SOURCE_FIELDS)
        _plugin_ref(problems, path, src, plugins)
        for j, ext in enumerate(as_list(problems, f"{path}.extractors", src.get("extractors"))):
            ext_path = f"{path}.extractors[{j}]"
            if not isinstance(ext, dict):
                problems.add(ext_path, f"expected a mapping with 'pluginRef', got {describe(ext)}")
                continue
            check_fields(problems, ext_path, ext, _EXTRACTOR_FIELDS)
            _plugin_ref(problems, ext_path, ext, plugins)
    return section


def _plugin_ref(
    problems: Problems, path: str, entry: Mapping[str, Any], plugins: Mapping[str, object]
) -> None:
    name = required_str(problems, path, entry, "pluginRef")
    if name is not None and name not in plugins:
        problems.add(
            f"{path}.pluginRef",
            f"unknown plugin {name!r} (known: {', '.join(plugins) or 'none declared'})",
        )


def flow_control(problems: Problems, value: Any) -> dict[str, Any] | None:
    section = optional_mapping(problems, "flowControl", value)
    if section is not None:
        check_fields(problems, "flowControl", section, _FLOW_CONTROL_FIELDS)
    return section


def feature_gates(problems: Problems, value: Any) -> list[str]:
    gates: list[str] = []
    for i, gate in enumerate(as_list(problems, "featureGates", value)):
        if not isinstance(gate, str):
            problems.add(f"featureGates[{i}]", f"expected a string, got {describe(gate)}")
        elif gate not in FEATURE_GATES:
            problems.add(
                f"featureGates[{i}]",
                f"unknown feature gate {gate!r} (known: {', '.join(FEATURE_GATES)})",
            )
        else:
            gates.append(gate)
    return gates
