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

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvgate.config.build import InspectingRegistry, parameter_path, roles_of, trial_context
from kvgate.config.datalayer import data_layer, request_handler
from kvgate.config.documents import describe, parse_text, read_document
from kvgate.config.fields import (
    Locator,
    Problems,
    as_list,
    check_fields,
    required_str,
)
from kvgate.config.generations import GENERATIONS, Generation, generation
from kvgate.config.model import (
    PickerConfig,
    PluginSpec,
    ProfileSpec,
    WeightedRef,
)
from kvgate.config.sections import FEATURE_GATES as FEATURE_GATES  # re-exported
from kvgate.config.sections import feature_gates, flow_control, saturation_detector
from kvgate.config.sections import format_duration as format_duration  # re-exported
from kvgate.config.sections import parse_duration as parse_duration  # re-exported
from kvgate.errors import ConfigError, PluginParameterError, Problem
from kvgate.plugins.registry import Registry, default_registry

#: Every apiVersion kvgate loads (kvgate.config.generations: what each allows).
API_VERSIONS: tuple[str, ...] = tuple(GENERATIONS)
KIND = "EndpointPickerConfig"
DEFAULT_PROFILE = "default"
DEFAULT_HANDLER_TYPE = "single-profile-handler"
DEFAULT_PICKER_TYPE = "max-score-picker"

#: Top-level fields checked when the apiVersion is unknown (the union of every generation's).
_TOP_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(f for g in GENERATIONS.values() for f in g.top_fields)
)
_PLUGIN_FIELDS = ("name", "type", "parameters")
_PROFILE_FIELDS = ("name", "plugins")
_REF_FIELDS = ("pluginRef", "weight")


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
    problems = Problems(source, path_prefix, locate)
    reg = InspectingRegistry(registry if registry is not None else default_registry())
    if not isinstance(data, dict):
        problems.add("", f"expected a mapping (an {KIND}), got {describe(data)}")
        raise ConfigError(problems.items)
    api_version = data.get("apiVersion")
    gen = generation(api_version) if isinstance(api_version, str) else None
    warnings: list[str] = []
    if api_version is None:
        problems.add("apiVersion", f"required field is missing; expected {_alternatives()}")
    elif gen is None:
        problems.add("apiVersion", f"expected {_alternatives()}, got {describe(api_version)}")
    elif gen.deprecation is not None:
        warnings.append(gen.deprecation)
    _top_fields(problems, data, gen)
    kind = data.get("kind")
    if kind is None:
        problems.add("kind", f"required field is missing; expected '{KIND}'")
    elif kind != KIND:
        problems.add("kind", f"expected '{KIND}', got {describe(kind)}")

    gates = feature_gates(
        problems,
        data.get("featureGates"),
        gen.feature_gates if gen is not None else FEATURE_GATES,
        f" in apiVersion {gen.api_version}" if gen is not None else "",
    )
    plugins = _plugins(problems, reg, data.get("plugins"))
    profiles_raw = _profiles(problems, plugins, data.get("schedulingProfiles"))
    sd_value, fc_value = _legacy_saturation_detector(data, gates)
    sd = saturation_detector(problems, sd_value, env, plugins)
    built = {name: p.plugin for name, p in plugins.items()}
    types = {name: reg.canonical(p.type) or p.type for name, p in plugins.items()}
    data_layer_config = data_layer(
        problems, data, gen or GENERATIONS[API_VERSIONS[0]], gates, built, types
    )
    flow_control_section = flow_control(problems, fc_value, gates, plugins)
    handler_config = request_handler(problems, data, built, warnings)

    resolved_plugins, profiles, handler = _apply_defaults(
        problems, reg, plugins, profiles_raw, has_profiles=bool(data.get("schedulingProfiles"))
    )
    if problems.items:
        raise ConfigError(problems.items)
    config = PickerConfig(
        source=source,
        api_version=str(api_version),
        plugins=tuple(resolved_plugins),
        profiles=tuple(profiles),
        handler=handler,
        feature_gates=frozenset(gates),
        saturation_detector=sd,
        data_layer=data_layer_config,
        flow_control=flow_control_section,
        request_handler=handler_config,
        text=text,
        warnings=tuple(warnings),
    )
    # llm-d's CreateMissingDataProducers, here rather than only at start-up, so `config
    # check` shows the producers a consumer gets and names a producer that cannot be had
    from kvgate.config.producers import add_default_producers

    return add_default_producers(config, registry if registry is not None else default_registry())


def _top_fields(problems: Problems, data: dict[str, Any], gen: Generation | None) -> None:
    """Top-level fields of the file's generation; another generation's name says what to write."""
    known = gen.top_fields if gen is not None else _TOP_FIELDS
    for key in data:
        if key in known:
            continue
        renamed = gen.renamed.get(str(key)) if gen is not None else None
        if renamed is not None and gen is not None:
            problems.add(str(key), f"{renamed} (apiVersion {gen.api_version})")
        else:
            check_fields(problems, "", {key: None}, known)


def _alternatives() -> str:
    return " or ".join(f"'{v}'" for v in API_VERSIONS)


# ---- plugins and profiles ----------------------------------------------------------------


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


def _legacy_saturation_detector(data: Mapping[str, Any], gates: Sequence[str]) -> tuple[Any, Any]:
    """The ``saturationDetector`` and ``flowControl`` values to parse.

    Without the flowControl gate llm-d-router still honours ``flowControl.saturationDetector``
    (its legacy admission path uses the detector; llm-d-router's configloader copies the
    deprecated top-level one there), so a ``flowControl`` section holding only that is read
    as the top-level one. Any other flowControl setting without the gate stays an error:
    llm-d ignores it with a warning, kvgate ignores nothing silently.
    """
    from kvgate.flowcontrol.config import FEATURE_GATE

    sd, fc = data.get("saturationDetector"), data.get("flowControl")
    if (
        FEATURE_GATE not in gates
        and sd is None
        and isinstance(fc, Mapping)
        and set(fc) == {"saturationDetector"}
    ):
        return fc["saturationDetector"], None
    return sd, fc


def _plugins(problems: Problems, reg: InspectingRegistry, value: Any) -> dict[str, _DeclaredPlugin]:
    declared: dict[str, _DeclaredPlugin] = {}
    ctx = trial_context()
    for i, entry in enumerate(as_list(problems, "plugins", value)):
        path = f"plugins[{i}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with 'type', got {describe(entry)}")
            continue
        raw_name = entry.get("name") if entry.get("name") is not None else entry.get("type")
        if isinstance(raw_name, str) and raw_name and raw_name not in declared:
            path = f"plugins[{raw_name}]"  # name the plugin where it is unambiguous
        check_fields(problems, path, entry, _PLUGIN_FIELDS)
        type_name = required_str(problems, path, entry, "type")
        name: str | None = type_name
        if entry.get("name") is not None:
            name = required_str(problems, path, entry, "name")
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
    for plugin in declared.values():  # references to other plugins, once all are built
        check = getattr(plugin.plugin, "check_references", None)
        if callable(check):
            try:
                check(ctx.plugins)
            except PluginParameterError as exc:
                problems.add(parameter_path(plugin.name, exc), exc.message)
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
    problems: Problems, plugins: Mapping[str, _DeclaredPlugin], value: Any
) -> list[_RawProfile]:
    profiles: list[_RawProfile] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(as_list(problems, "schedulingProfiles", value)):
        path = f"schedulingProfiles[{i}]"
        if not isinstance(entry, dict):
            problems.add(
                path, f"expected a mapping with 'name' and 'plugins', got {describe(entry)}"
            )
            continue
        name = required_str(problems, path, entry, "name")
        if name is not None:
            if name in seen:
                problems.add(
                    f"{path}.name",
                    f"duplicate profile name {name!r} (first declared at schedulingProfiles[{seen[name]}])",
                )
            else:
                seen[name] = i
                path = f"schedulingProfiles[{name}]"
        check_fields(problems, path, entry, _PROFILE_FIELDS)
        profile = _RawProfile(name or f"#{i}", path)
        refs_seen: dict[str, int] = {}
        for j, ref in enumerate(as_list(problems, f"{path}.plugins", entry.get("plugins"))):
            ref_path = f"{path}.plugins[{j}]"
            if not isinstance(ref, dict):
                problems.add(ref_path, f"expected a mapping with 'pluginRef', got {describe(ref)}")
                continue
            check_fields(problems, ref_path, ref, _REF_FIELDS)
            weight = _weight(problems, f"{ref_path}.weight", ref.get("weight"))
            plugin_name = required_str(problems, ref_path, ref, "pluginRef")
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


def _weight(problems: Problems, path: str, value: Any) -> int | float | None:
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
    problems: Problems,
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
    problems: Problems, reg: InspectingRegistry, name: str, type_name: str
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
