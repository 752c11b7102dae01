"""Building plugins and the :class:`~kvgate.scheduling.scheduler.Scheduler` from a PickerConfig.

The loader also builds every plugin once, with a throw-away context, to learn its roles (llm-d
derives a plugin's roles from the interfaces its object implements) and the parameter values
its factory actually used, defaults included, for ``kvgate config check``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from kvgate.config.model import PickerConfig
from kvgate.config.producers import add_default_producers
from kvgate.errors import ConfigError, PluginParameterError, Problem
from kvgate.plugins.base import (
    EndpointListener,
    Filter,
    Lifecycle,
    Params,
    Picker,
    Plugin,
    PluginContext,
    PreRequest,
    Producer,
    ProfileHandler,
    RequestHeaderProcessor,
    ResponseComplete,
    Scorer,
)
from kvgate.plugins.datalayer.base import DataExtractor, DataSource
from kvgate.plugins.registry import Registry, default_registry
from kvgate.plugins.requesthandling import RequestParser
from kvgate.scheduling.scheduler import Scheduler, SchedulerProfile, WeightedScorer

_ROLE_PROTOCOLS: tuple[tuple[str, type], ...] = (
    ("filter", Filter),
    ("scorer", Scorer),
    ("picker", Picker),
    ("profile-handler", ProfileHandler),
    ("request-header", RequestHeaderProcessor),
    ("pre-request", PreRequest),
    ("response-complete", ResponseComplete),
    ("endpoint-listener", EndpointListener),
    ("lifecycle", Lifecycle),
    ("data-producer", Producer),
    ("data-source", DataSource),
    ("data-extractor", DataExtractor),
    ("parser", RequestParser),
)


def roles_of(plugin: Plugin) -> frozenset[str]:
    """The extension points ``plugin`` implements (``filter``, ``scorer``, ``picker``, ...)."""
    from kvgate.flowcontrol.config import FAIRNESS_POLICY_TYPES  # flowcontrol imports config

    roles = {role for role, proto in _ROLE_PROTOCOLS if isinstance(plugin, proto)}
    if plugin.type_name in FAIRNESS_POLICY_TYPES:
        # its pick(band) chooses a flow-control queue: it is no scheduling Picker, so the
        # defaulting rules must not make it a profile's picker
        roles.discard("picker")
        roles.add("fairness-policy")
    return frozenset(roles)


class _RecordingParams(Params):
    """Params that remember the value each getter returned (defaults included)."""

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        super().__init__(raw)
        self.used: dict[str, Any] = {}

    def get_int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = super().get_int(key, default, minimum=minimum)
        self.used[key] = value
        return value

    def get_float(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = super().get_float(key, default, minimum=minimum, maximum=maximum)
        self.used[key] = value
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = super().get_bool(key, default)
        self.used[key] = value
        return value

    def get_str(self, key: str, default: str) -> str:
        value = super().get_str(key, default)
        self.used[key] = value
        return value

    def get_str_list(self, key: str, default: Any = ()) -> list[str]:
        value = super().get_str_list(key, default)
        self.used[key] = value
        return value

    def get_mapping(self, key: str) -> Mapping[str, Any]:
        value = super().get_mapping(key)
        self.used[key] = dict(value)
        return value

    def get_any(self, key: str) -> Any:
        value = super().get_any(key)
        self.used[key] = value
        return value


class InspectingRegistry(Registry):
    """A copy of a registry whose ``create`` records the parameters each factory used."""

    def __init__(self, base: Registry) -> None:
        super().__init__()
        # Same package; the copy shares the base's factories and aliases.
        self._factories = dict(base._factories)
        self._aliases = dict(base._aliases)
        # Registered rejections and default producers travel with the copy too.
        for attr in ("_rejected", "_default_producers"):
            if hasattr(base, attr):
                setattr(self, attr, dict(getattr(base, attr)))
        self.last_parameters: dict[str, Any] = {}

    def create(
        self,
        type_name: str,
        name: str,
        parameters: Mapping[str, Any] | None,
        ctx: PluginContext,
    ) -> Plugin:
        canonical = self.canonical(type_name)
        if canonical is None:
            raise KeyError(type_name)
        params = _RecordingParams(parameters)
        self.last_parameters = {}
        plugin = self._factories[canonical](name, params, ctx)
        params.check_unknown()
        # Keys the factory read, in the order it read them, then any it passed through raw.
        used = dict(params.used)
        for key, value in params.raw.items():
            used.setdefault(key, value)
        self.last_parameters = used
        return plugin


def build_scheduler(
    config: PickerConfig,
    ctx: PluginContext | None = None,
    *,
    registry: Registry | None = None,
) -> Scheduler:
    """Build fresh plugin objects for ``config`` and assemble the Scheduler.

    ``ctx`` supplies the RNG, clock and shared services (a seeded ``random.Random`` makes
    every pick reproducible); a fresh default context is used when it is None. Each plugin is
    also put into ``ctx.plugins`` under its name, so plugins can find each other. Raises
    ConfigError if a plugin cannot be built (the loader normally catches that earlier).
    """
    ctx = ctx if ctx is not None else PluginContext()
    reg = registry if registry is not None else default_registry()
    config = add_default_producers(config, reg)  # llm-d's CreateMissingDataProducers
    problems: list[Problem] = []
    built: dict[str, Plugin] = {}
    for spec in config.plugins:
        try:
            plugin = reg.create(spec.canonical_type, spec.name, spec.parameters, ctx)
        except KeyError:
            problems.append(
                Problem(
                    config.source,
                    f"plugins[{spec.name}].type",
                    f"unknown plugin type {spec.type!r} (known: {', '.join(reg.known_types())})",
                )
            )
            continue
        except PluginParameterError as exc:
            problems.append(Problem(config.source, parameter_path(spec.name, exc), exc.message))
            continue
        built[spec.name] = plugin
        ctx.plugins[spec.name] = plugin
    if problems:
        raise ConfigError(problems)

    profiles: dict[str, SchedulerProfile] = {}
    for profile in config.profiles:
        filters: list[Filter] = []
        for name in profile.filters:
            flt = built[name]
            if not isinstance(flt, Filter):
                raise _rebuilt_differently(name, "filter", config)
            filters.append(flt)
        scorers: list[WeightedScorer] = []
        for ref in profile.scorers:
            scorer = built[ref.name]
            if not isinstance(scorer, Scorer):
                raise _rebuilt_differently(ref.name, "scorer", config)
            scorers.append(WeightedScorer(scorer, float(ref.weight)))
        picker = built[profile.picker]
        if not isinstance(picker, Picker):
            raise _rebuilt_differently(profile.picker, "picker", config)
        profiles[profile.name] = SchedulerProfile(
            profile.name, tuple(filters), tuple(scorers), picker
        )
    handler = built[config.handler]
    if not isinstance(handler, ProfileHandler):
        raise _rebuilt_differently(config.handler, "profile handler", config)
    return Scheduler(profiles=profiles, handler=handler, plugins=tuple(built.values()))


def _rebuilt_differently(name: str, role: str, config: PickerConfig) -> ConfigError:
    # The loader learned roles from a trial build; a factory whose objects change shape from
    # one call to the next would land here.
    return ConfigError(
        [Problem(config.source, f"plugins[{name}]", f"plugin is not a {role} when built again")]
    )


def parameter_path(plugin_name: str, exc: PluginParameterError) -> str:
    """``plugins[<name>].parameters.<field>`` for a plugin parameter error."""
    base = f"plugins[{plugin_name}].parameters"
    return f"{base}.{exc.field}" if exc.field else base


def trial_context() -> PluginContext:
    """A context for the loader's trial build: seeded, marked as a trial (plugins load no
    tokenizer in it), with no shared services."""
    from kvgate.kvcache.tokenize import TRIAL_SERVICE

    ctx = PluginContext(rng=random.Random(0))
    ctx.services[TRIAL_SERVICE] = True
    return ctx
