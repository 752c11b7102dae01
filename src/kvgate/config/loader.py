"""EndpointPickerConfig: parse -> validate -> apply llm-d's defaults -> :class:`PickerConfig`.

Decoding is strict, as in llm-d: unknown fields, duplicate names, unknown plugin types,
dangling ``pluginRef``s and wrong value types are errors. Every problem is collected, each
naming the file, a field path such as ``schedulingProfiles[default].plugins[2].pluginRef``
and what was expected; one :class:`~kvgate.errors.ConfigError` carries them all.

The defaulting rules follow GIE's config loader (pkg/epp/config/loader/defaults.go):

1. no ``schedulingProfiles`` -> one profile ``default`` with every Filter, Scorer and Picker;
2. one profile and no ProfileHandler -> a ``single-profile-handler`` is added;
3. a profile without a picker gets the first declared Picker, else an added ``max-score-picker``;
4. exactly one ProfileHandler; ``single-profile-handler`` with more than one profile is an error.

A plugin's roles come from the methods its built object has, so the loader builds each plugin
once with a throw-away context (which also catches parameter errors early).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kvgate.config.build import InspectingRegistry, parameter_path, roles_of, trial_context
from kvgate.config.documents import describe, parse_text, read_document
from kvgate.config.model import (
    PickerConfig,
    PluginSpec,
    ProfileSpec,
    SaturationDetectorConfig,
    WeightedRef,
)
from kvgate.errors import ConfigError, PluginParameterError, Problem
from kvgate.plugins.registry import Registry, default_registry

API_VERSIONS: tuple[str, ...] = (
    "inference.networking.x-k8s.io/v1alpha1",
    "llm-d.ai/v1alpha1",
)
KIND = "EndpointPickerConfig"
FEATURE_GATES: tuple[str, ...] = ("dataLayer", "flowControl", "prepareDataPlugins")
DEFAULT_PROFILE = "default"
DEFAULT_HANDLER_TYPE = "single-profile-handler"
DEFAULT_PICKER_TYPE = "max-score-picker"

_TOP_FIELDS = (
    "apiVersion",
    "kind",
    "plugins",
    "schedulingProfiles",
    "featureGates",
    "saturationDetector",
    "data",
    "flowControl",
    "parser",
)
_PLUGIN_FIELDS = ("name", "type", "parameters")
_PROFILE_FIELDS = ("name", "plugins")
_REF_FIELDS = ("pluginRef", "weight")
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


#: Finds the (line, column) of a field path in the document, if it can.
Locator = Callable[[str], "tuple[int, int] | None"]


class _Problems:
    """Collects problems for one document; ``prefix`` is prepended to every field path.

    ``locate`` (given the path without the prefix) adds the line and column of the field.
    """

    def __init__(self, source: str, prefix: str = "", locate: Locator | None = None) -> None:
        self.source = source
        self.prefix = prefix
        self.locate = locate
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        full = f"{self.prefix}.{path}" if self.prefix and path else (self.prefix or path)
        where = self.locate(path) if self.locate is not None else None
        line, column = where if where is not None else (None, None)
        self.items.append(Problem(self.source, full, message, line, column))


def load_picker_config(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    source_name: str | None = None,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
) -> PickerConfig:
    """Load an EndpointPickerConfig from a file or from ``text`` (YAML or JSON).

    With neither, llm-d's default configuration is returned (queue 2, kv-cache-utilization 2,
    prefix-cache 3). ``source_name`` names the text in error messages. ``env`` (default
    ``os.environ``) supplies the SD_* saturation-detector overrides. Raises ConfigError
    listing every problem found.
    """
    if text is not None:
        source = source_name or (str(path) if path is not None else "<config-text>")
        doc = parse_text(text, source)
    elif path is not None:
        doc = read_document(path)
        if source_name:
            doc = parse_text(doc.text, source_name)
    else:
        from kvgate.config.policies import DEFAULT_POLICY, policy_config_text

        source = source_name or f"<policy {DEFAULT_POLICY}>"
        doc = parse_text(policy_config_text(DEFAULT_POLICY), source)
    return picker_config_from_data(
        doc.data, source=doc.source, text=doc.text, registry=registry, env=env, locate=doc.locate
    )


def load_picker_config_text(
    text: str,
    source: str,
    *,
    path_prefix: str = "",
    line_offset: int = 0,
    column_offset: int = 0,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
) -> PickerConfig:
    """Load config text embedded in another file: positions and paths point into that file."""
    try:
        doc = parse_text(text, source, line_offset=line_offset, column_offset=column_offset)
    except ConfigError as exc:
        raise ConfigError(
            [_prefixed(p, path_prefix) if path_prefix else p for p in exc.problems]
        ) from exc
    return picker_config_from_data(
        doc.data,
        source=source,
        text=text,
        registry=registry,
        env=env,
        path_prefix=path_prefix,
        locate=doc.locate,
    )


def _prefixed(problem: Problem, prefix: str) -> Problem:
    path = f"{prefix}.{problem.path}" if problem.path else prefix
    return Problem(problem.file, path, problem.message, problem.line, problem.column)


def picker_config_from_data(
    data: Any,
    *,
    source: str,
    text: str = "",
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    path_prefix: str = "",
    locate: Locator | None = None,
) -> PickerConfig:
    """Validate decoded EndpointPickerConfig data and apply llm-d's defaulting rules.

    ``locate`` maps a field path to its (line, column) for the messages (see
    :meth:`kvgate.config.documents.Document.locate`); ``path_prefix`` is prepended to paths.
    """
    problems = _Problems(source, path_prefix, locate)
    reg = InspectingRegistry(registry if registry is not None else default_registry())
    if not isinstance(data, dict):
        problems.add("", f"expected a mapping (an {KIND}), got {describe(data)}")
        raise ConfigError(problems.items)
    _check_fields(problems, "", data, _TOP_FIELDS)

    api_version = data.get("apiVersion")
    if api_version is None:
        problems.add("apiVersion", f"required field is missing; expected {_alternatives()}")
    elif api_version not in API_VERSIONS:
        problems.add("apiVersion", f"expected {_alternatives()}, got {describe(api_version)}")
    kind = data.get("kind")
    if kind is None:
        problems.add("kind", f"required field is missing; expected '{KIND}'")
    elif kind != KIND:
        problems.add("kind", f"expected '{KIND}', got {describe(kind)}")

    gates = _feature_gates(problems, data.get("featureGates"))
    plugins = _plugins(problems, reg, data.get("plugins"))
    profiles_raw = _profiles(problems, plugins, data.get("schedulingProfiles"))
    sd = _saturation_detector(problems, data.get("saturationDetector"), env)
    data_layer = _data_section(problems, data, gates, plugins)
    flow_control = _flow_control(problems, data.get("flowControl"))
    parser = _optional_mapping(problems, "parser", data.get("parser"))

    resolved_plugins, profiles, handler = _apply_defaults(
        problems, reg, plugins, profiles_raw, has_profiles=bool(data.get("schedulingProfiles"))
    )
    if problems.items:
        raise ConfigError(problems.items)
    return PickerConfig(
        source=source,
        api_version=str(api_version),
        plugins=tuple(resolved_plugins),
        profiles=tuple(profiles),
        handler=handler,
        feature_gates=frozenset(gates),
        saturation_detector=sd,
        data=data_layer,
        flow_control=flow_control,
        parser=parser,
        text=text,
    )


# ---- field helpers -----------------------------------------------------------------------


def _alternatives() -> str:
    return " or ".join(f"'{v}'" for v in API_VERSIONS)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_fields(
    problems: _Problems, path: str, mapping: Mapping[Any, Any], known: tuple[str, ...]
) -> None:
    for key in mapping:
        if key in known:
            continue
        where = _join(path, str(key))
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.add(where, f"unknown field{hint} (known: {', '.join(known)})")


def _list(problems: _Problems, path: str, value: Any) -> list[Any]:
    """``value`` as a list; null/absent is empty; anything else is a problem."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"expected a list, got {describe(value)}")
        return []
    return value


def _mapping(problems: _Problems, path: str, value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {describe(value)}")
        return None
    return value


def _optional_mapping(problems: _Problems, path: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return _mapping(problems, path, value)


def _required_str(problems: _Problems, path: str, entry: Mapping[str, Any], key: str) -> str | None:
    if key not in entry or entry[key] is None:
        problems.add(_join(path, key), "required field is missing; expected a string")
        return None
    value = entry[key]
    if not isinstance(value, str) or not value:
        problems.add(_join(path, key), f"expected a non-empty string, got {describe(value)}")
        return None
    return value


# ---- sections ----------------------------------------------------------------------------


def _feature_gates(problems: _Problems, value: Any) -> list[str]:
    gates: list[str] = []
    for i, gate in enumerate(_list(problems, "featureGates", value)):
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


class _DeclaredPlugin:
    """A ``plugins[]`` entry during validation; ``plugin`` is its trial-built object."""

    __slots__ = ("effective", "index", "name", "parameters", "path", "plugin", "roles", "type")

    def __init__(self, index: int, name: str, type_name: str, parameters: dict[str, Any]) -> None:
        self.index = index
        self.name = name
        self.type = type_name
        self.parameters = parameters
        self.path = f"plugins[{name}]"
        self.plugin: object | None = None  # None: unknown type or bad parameters
        self.roles: frozenset[str] = frozenset()
        self.effective: dict[str, Any] = {}


def _plugins(
    problems: _Problems, reg: InspectingRegistry, value: Any
) -> dict[str, _DeclaredPlugin]:
    declared: dict[str, _DeclaredPlugin] = {}
    ctx = trial_context()
    for i, entry in enumerate(_list(problems, "plugins", value)):
        path = f"plugins[{i}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with 'type', got {describe(entry)}")
            continue
        raw_name = entry.get("name") if entry.get("name") is not None else entry.get("type")
        if isinstance(raw_name, str) and raw_name and raw_name not in declared:
            path = f"plugins[{raw_name}]"  # name the plugin where it is unambiguous
        _check_fields(problems, path, entry, _PLUGIN_FIELDS)
        type_name = _required_str(problems, path, entry, "type")
        name: str | None = type_name
        if entry.get("name") is not None:
            name = _required_str(problems, path, entry, "name")
        parameters = entry.get("parameters")
        if parameters is None:
            parameters = {}
        elif not isinstance(parameters, dict):
            problems.add(f"{path}.parameters", f"expected a mapping, got {describe(parameters)}")
            parameters = None
        if name is None or type_name is None:
            continue
        if name in declared:
            problems.add(
                f"plugins[{i}].name",
                f"duplicate plugin name {name!r} (first declared at plugins[{declared[name].index}]); "
                "give one of them a distinct 'name'",
            )
            continue
        plugin = _DeclaredPlugin(i, name, type_name, parameters or {})
        declared[name] = plugin
        if reg.canonical(type_name) is None:
            problems.add(
                f"plugins[{name}].type",
                f"unknown plugin type {type_name!r} (known: {', '.join(reg.known_types())})",
            )
            continue
        if parameters is None:
            continue
        try:
            built = reg.create(type_name, name, parameters, ctx)
        except PluginParameterError as exc:
            problems.add(parameter_path(name, exc), exc.message)
            continue
        ctx.plugins[name] = built
        plugin.plugin = built
        plugin.roles = roles_of(built)
        plugin.effective = dict(reg.last_parameters)
    return declared


class _RawProfile:
    __slots__ = ("filters", "name", "path", "picker", "scorers")

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.filters: list[str] = []
        self.scorers: list[WeightedRef] = []
        self.picker: str | None = None


def _profiles(
    problems: _Problems, plugins: Mapping[str, _DeclaredPlugin], value: Any
) -> list[_RawProfile]:
    profiles: list[_RawProfile] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(_list(problems, "schedulingProfiles", value)):
        path = f"schedulingProfiles[{i}]"
        if not isinstance(entry, dict):
            problems.add(
                path, f"expected a mapping with 'name' and 'plugins', got {describe(entry)}"
            )
            continue
        name = _required_str(problems, path, entry, "name")
        if name is not None:
            if name in seen:
                problems.add(
                    f"{path}.name",
                    f"duplicate profile name {name!r} (first declared at schedulingProfiles[{seen[name]}])",
                )
            else:
                seen[name] = i
                path = f"schedulingProfiles[{name}]"
        _check_fields(problems, path, entry, _PROFILE_FIELDS)
        profile = _RawProfile(name or f"#{i}", path)
        refs_seen: dict[str, int] = {}
        for j, ref in enumerate(_list(problems, f"{path}.plugins", entry.get("plugins"))):
            ref_path = f"{path}.plugins[{j}]"
            if not isinstance(ref, dict):
                problems.add(ref_path, f"expected a mapping with 'pluginRef', got {describe(ref)}")
                continue
            _check_fields(problems, ref_path, ref, _REF_FIELDS)
            weight = _weight(problems, f"{ref_path}.weight", ref.get("weight"))
            plugin_name = _required_str(problems, ref_path, ref, "pluginRef")
            if plugin_name is None:
                continue
            declared = plugins.get(plugin_name)
            if declared is None:
                problems.add(
                    f"{ref_path}.pluginRef",
                    f"unknown plugin {plugin_name!r} (known: {', '.join(plugins) or 'none declared'})",
                )
                continue
            if plugin_name in refs_seen:
                problems.add(
                    f"{ref_path}.pluginRef",
                    f"plugin {plugin_name!r} is already in profile {profile.name!r} "
                    f"(plugins[{refs_seen[plugin_name]}])",
                )
                continue
            refs_seen[plugin_name] = j
            if declared.plugin is None:
                continue  # its own problem is already reported
            roles = declared.roles
            if "filter" in roles:
                profile.filters.append(plugin_name)
            if "scorer" in roles:
                profile.scorers.append(WeightedRef(plugin_name, 1 if weight is None else weight))
            if "picker" in roles:
                if profile.picker is not None:
                    problems.add(
                        f"{ref_path}.pluginRef",
                        f"profile {profile.name!r} already has picker {profile.picker!r}; "
                        "a profile has exactly one picker",
                    )
                else:
                    profile.picker = plugin_name
            # Other roles (profile handlers, pre-request hooks) are ignored here, as in GIE.
        profiles.append(profile)
    return profiles


def _weight(problems: _Problems, path: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(path, f"expected a number (int or float), got {describe(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(path, f"expected a finite number, got {value}")
        return None
    return value


def _apply_defaults(
    problems: _Problems,
    reg: InspectingRegistry,
    plugins: dict[str, _DeclaredPlugin],
    raw_profiles: list[_RawProfile],
    *,
    has_profiles: bool,
) -> tuple[list[PluginSpec], list[ProfileSpec], str]:
    """llm-d's defaulting rules; returns (plugins incl. added ones, profiles, handler name)."""
    specs: list[PluginSpec] = [
        PluginSpec(
            name=p.name,
            type=p.type,
            canonical_type=reg.canonical(p.type) or p.type,
            parameters=p.parameters,
            roles=p.roles,
            effective_parameters=p.effective,
        )
        for p in plugins.values()
    ]
    added_profile = False
    if not has_profiles:
        # (a) one profile "default" with every Filter, Scorer and Picker, in declared order.
        default = _RawProfile(DEFAULT_PROFILE, f"schedulingProfiles[{DEFAULT_PROFILE}]")
        for p in plugins.values():
            if "filter" in p.roles:
                default.filters.append(p.name)
            if "scorer" in p.roles:
                default.scorers.append(WeightedRef(p.name, 1))
            if "picker" in p.roles:
                if default.picker is not None:
                    problems.add(
                        f"{p.path}.type",
                        f"a second picker for the 'default' profile (already {default.picker!r}); "
                        "with no schedulingProfiles every picker joins that profile, and a "
                        "profile has exactly one picker: declare schedulingProfiles",
                    )
                else:
                    default.picker = p.name
        raw_profiles = [default]
        added_profile = True

    pickers = [p for p in plugins.values() if "picker" in p.roles]
    profiles: list[ProfileSpec] = []
    added_picker: str | None = None
    for raw in raw_profiles:
        picker = raw.picker
        picker_added = False
        if picker is None:
            # (c) the first declared picker, else one added max-score-picker.
            if pickers:
                picker = pickers[0].name
            else:
                if added_picker is None:
                    added_picker = _unused_name(DEFAULT_PICKER_TYPE, plugins)
                    specs.append(_added_plugin(problems, reg, added_picker, DEFAULT_PICKER_TYPE))
                picker = added_picker
            picker_added = True
        profiles.append(
            ProfileSpec(
                name=raw.name,
                filters=tuple(raw.filters),
                scorers=tuple(raw.scorers),
                picker=picker,
                added_by_default=added_profile,
                picker_added_by_default=picker_added,
            )
        )

    handlers = [p for p in plugins.values() if "profile-handler" in p.roles]
    handler_name = ""
    for extra in handlers[1:]:
        problems.add(
            f"{extra.path}.type",
            f"a second profile handler ({handlers[0].name!r} is the first); "
            "exactly one profile handler is allowed",
        )
    if handlers:
        handler = handlers[0]
        handler_name = handler.name
        if handler.type == DEFAULT_HANDLER_TYPE and len(profiles) > 1:
            problems.add(
                "schedulingProfiles",
                f"{DEFAULT_HANDLER_TYPE} {handler.name!r} runs exactly one profile, but "
                f"{len(profiles)} are configured ({', '.join(p.name for p in profiles)}); "
                "use a multi-profile handler such as pd-profile-handler",
            )
    elif len(profiles) == 1:
        # (b) one profile and no handler: add single-profile-handler.
        handler_name = _unused_name(DEFAULT_HANDLER_TYPE, plugins)
        specs.append(_added_plugin(problems, reg, handler_name, DEFAULT_HANDLER_TYPE))
    elif len(profiles) > 1:
        problems.add(
            "plugins",
            f"{len(profiles)} scheduling profiles need a profile handler plugin "
            f"(e.g. pd-profile-handler); {DEFAULT_HANDLER_TYPE} is added only for one profile",
        )
    return specs, profiles, handler_name


def _unused_name(base: str, plugins: Mapping[str, _DeclaredPlugin]) -> str:
    name, n = base, 2
    while name in plugins:
        name = f"{base}-{n}"
        n += 1
    return name


def _added_plugin(
    problems: _Problems, reg: InspectingRegistry, name: str, type_name: str
) -> PluginSpec:
    """A plugin the defaulting rules add (built once to learn its roles and parameters)."""
    roles: frozenset[str] = frozenset()
    effective: dict[str, Any] = {}
    if reg.canonical(type_name) is None:
        problems.add(
            "plugins",
            f"the defaulting rules need plugin type {type_name!r}, which is not registered",
        )
    else:
        plugin = reg.create(type_name, name, {}, trial_context())
        roles = roles_of(plugin)
        effective = dict(reg.last_parameters)
    return PluginSpec(
        name=name,
        type=type_name,
        canonical_type=type_name,
        parameters={},
        roles=roles,
        effective_parameters=effective,
        added_by_default=True,
    )


# ---- saturation detector, data layer, flow control ---------------------------------------

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


def _saturation_detector(
    problems: _Problems, value: Any, env: Mapping[str, str] | None
) -> SaturationDetectorConfig:
    defaults = SaturationDetectorConfig()
    queue = defaults.queue_depth_threshold
    kv = defaults.kv_cache_util_threshold
    staleness = defaults.metrics_staleness_threshold_s
    section = _optional_mapping(problems, "saturationDetector", value) or {}
    _check_fields(problems, "saturationDetector", section, _SD_FIELDS)
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
    env_problems = _Problems("environment")
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


def _data_section(
    problems: _Problems,
    data: Mapping[str, Any],
    gates: list[str],
    plugins: Mapping[str, _DeclaredPlugin],
) -> dict[str, Any] | None:
    if data.get("data") is None:
        return None
    section = _mapping(problems, "data", data["data"])
    if section is None:
        return None
    if "dataLayer" not in gates:
        problems.add(
            "data", "allowed only with the dataLayer feature gate (add it to featureGates)"
        )
    _check_fields(problems, "data", section, _DATA_FIELDS)
    for i, src in enumerate(_list(problems, "data.sources", section.get("sources"))):
        path = f"data.sources[{i}]"
        if not isinstance(src, dict):
            problems.add(path, f"expected a mapping with 'pluginRef', got {describe(src)}")
            continue
        _check_fields(problems, path, src, _SOURCE_FIELDS)
        _plugin_ref(problems, path, src, plugins)
        for j, ext in enumerate(_list(problems, f"{path}.extractors", src.get("extractors"))):
            ext_path = f"{path}.extractors[{j}]"
            if not isinstance(ext, dict):
                problems.add(ext_path, f"expected a mapping with 'pluginRef', got {describe(ext)}")
                continue
            _check_fields(problems, ext_path, ext, _EXTRACTOR_FIELDS)
            _plugin_ref(problems, ext_path, ext, plugins)
    return section


def _plugin_ref(
    problems: _Problems, path: str, entry: Mapping[str, Any], plugins: Mapping[str, _DeclaredPlugin]
) -> None:
    name = _required_str(problems, path, entry, "pluginRef")
    if name is not None and name not in plugins:
        problems.add(
            f"{path}.pluginRef",
            f"unknown plugin {name!r} (known: {', '.join(plugins) or 'none declared'})",
        )


def _flow_control(problems: _Problems, value: Any) -> dict[str, Any] | None:
    section = _optional_mapping(problems, "flowControl", value)
    if section is not None:
        _check_fields(problems, "flowControl", section, _FLOW_CONTROL_FIELDS)
    return section
