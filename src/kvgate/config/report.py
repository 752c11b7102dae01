"""Human-readable and JSON views of a resolved :class:`PickerConfig` (``kvgate config check``)."""

from __future__ import annotations

import json
from typing import Any

from kvgate.config.datalayer import DataLayerConfig
from kvgate.config.model import ROLE_NAMES, PickerConfig, PluginSpec
from kvgate.config.sections import format_duration

_ADDED = "  [added by default]"


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _roles(spec: PluginSpec) -> str:
    return ", ".join(r for r in ROLE_NAMES if r in spec.roles) or "none"


def _parameters(spec: PluginSpec) -> dict[str, Any]:
    """Effective parameters: what the factory used (defaults applied), else what was written."""
    return dict(spec.effective_parameters) if spec.effective_parameters else dict(spec.parameters)


def render_config(config: PickerConfig) -> str:
    """The resolved profiles, plugins, parameters and weights, as ``kvgate config check`` prints."""
    out: list[str] = []
    handler = config.plugin(config.handler)
    out.append(
        f"profile handler: {handler.name} ({handler.type})"
        + (_ADDED if handler.added_by_default else "")
    )
    out.append("profiles:")
    for profile in config.profiles:
        out.append(f"  {profile.name}" + (_ADDED if profile.added_by_default else ""))
        out.append(f"    filters: {', '.join(profile.filters) if profile.filters else '(none)'}")
        if profile.scorers:
            out.append("    scorers (total = sum of weight * score):")
            width = max(len(ref.name) for ref in profile.scorers)
            for ref in profile.scorers:
                out.append(f"      {ref.name:<{width}}  weight {ref.weight}")
        else:
            out.append("    scorers: (none)")
        out.append(
            f"    picker: {profile.picker}" + (_ADDED if profile.picker_added_by_default else "")
        )
    out.append("plugins:")
    for spec in config.plugins:
        type_text = (
            spec.type
            if spec.type == spec.canonical_type
            else (f"{spec.type} (alias of {spec.canonical_type})")
        )
        out.append(
            f"  {spec.name}: type {type_text}; roles {_roles(spec)}"
            + (_ADDED if spec.added_by_default else "")
        )
        params = _parameters(spec)
        for key, value in params.items():
            note = "" if key in spec.parameters else "  (default)"
            out.append(f"      {key}: {_value(value)}{note}")
    sd = config.saturation_detector
    out.append(
        "saturation detector: "
        f"queueDepthThreshold={sd.queue_depth_threshold} "
        f"kvCacheUtilThreshold={sd.kv_cache_util_threshold:g} "
        f"metricsStalenessThreshold={format_duration(sd.metrics_staleness_threshold_s)}"
    )
    out.append("feature gates: " + (", ".join(sorted(config.feature_gates)) or "(none)"))
    out.append("data layer: " + _data_layer(config))
    parsers = config.request_handler.parsers if config.request_handler is not None else ()
    out.append("request parsers: " + (", ".join(parsers) or "(default: OpenAI API)"))
    return "\n".join(out) + "\n"


def _data_layer(config: PickerConfig) -> str:
    dl = config.data_layer
    if dl is None:
        return "(none)"
    if dl.legacy_metrics:
        return "off (enableLegacyMetrics: the --*-metric flags drive scraping)"
    if dl.metrics is None:
        return "metrics collection off (injectDefaults: false, no metrics source)" + _models(dl)
    m = dl.metrics
    if m.static is not None:
        return (
            f"metrics from {m.source_plugin} (llm-d's test double) for {len(m.static)} "
            "endpoint(s), /metrics not read" + _models(dl)
        )
    src = m.source
    port = f":{src.port}" if src.port is not None else ""
    interval = f" every {format_duration(src.interval_s)}" if src.interval_s is not None else ""
    text = (
        f"scrape {src.scheme}://<endpoint>{port}{src.path}{interval}"
        f"{' (TLS verified)' if src.scheme == 'https' and not src.insecure_skip_verify else ''}; "
        f"engines {', '.join(sorted(m.engines))} by label {m.engine_label_key} "
        f"(default {m.default_engine})"
    )
    if m.injected:
        text += "  [added by default]"
    if dl.endpoint_listeners:
        text += f"; endpoint changes -> {', '.join(dl.endpoint_listeners)}"
    return text + _models(dl)


def _models(dl: DataLayerConfig) -> str:
    src = dl.models
    if src is None:
        return ""
    every = format_duration(src.interval_s) if src.interval_s is not None else "refresh tick"
    verified = " (TLS verified)" if src.scheme == "https" and not src.insecure_skip_verify else ""
    return f"; models from {src.scheme}://<endpoint>{src.path} every {every}{verified}"


def config_as_dict(config: PickerConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (``kvgate config check --json``)."""
    sd = config.saturation_detector
    return {
        "source": config.source,
        "apiVersion": config.api_version,
        "handler": config.handler,
        "profiles": [
            {
                "name": p.name,
                "filters": list(p.filters),
                "scorers": [{"pluginRef": r.name, "weight": r.weight} for r in p.scorers],
                "picker": p.picker,
                "addedByDefault": p.added_by_default,
                "pickerAddedByDefault": p.picker_added_by_default,
            }
            for p in config.profiles
        ],
        "plugins": [
            {
                "name": s.name,
                "type": s.type,
                "canonicalType": s.canonical_type,
                "roles": [r for r in ROLE_NAMES if r in s.roles],
                "parameters": dict(s.parameters),
                "effectiveParameters": json.loads(_value(_parameters(s))),
                "addedByDefault": s.added_by_default,
            }
            for s in config.plugins
        ],
        "saturationDetector": {
            "queueDepthThreshold": sd.queue_depth_threshold,
            "kvCacheUtilThreshold": sd.kv_cache_util_threshold,
            "metricsStalenessThreshold": format_duration(sd.metrics_staleness_threshold_s),
        },
        "featureGates": sorted(config.feature_gates),
    }
