"""llm-d's data-producer defaulting: add the producers consumers need, reject the ones they lack.

Every plugin is built once with a throw-away context to learn which data keys it consumes
and produces. A consumed key nothing produces is then either

* the data type's **default** key (producer name = the type registered as its default
  producer, e.g. ``PrefixCacheMatchInfoDataKey/approx-prefix-cache-producer``): that producer
  is added with default parameters, under that name, marked ``added_by_default`` (llm-d's
  ``CreateMissingDataProducers``), and the check repeats, since an added producer may consume
  in turn (``inflight-load-producer`` needs a ``token-producer``); or
* a producer the consumer **named** (``prefixMatchInfoProducerName: gpu``) that is not
  configured, or a configured plugin that does not produce that data: a config error naming
  the consumer, the producer and the data.

Producers that consume each other in a cycle are an error too. The result is what
``kvgate config check`` prints and what :func:`kvgate.config.build.build_scheduler` builds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kvgate.config.model import PickerConfig, PluginSpec
from kvgate.errors import ConfigError, PluginParameterError, Problem
from kvgate.plugins.base import Consumer, Plugin, Producer
from kvgate.plugins.registry import Registry
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.scheduler import order_producers

#: Rounds of transitive defaulting (each may add the producers the previous round's need).
_MAX_ROUNDS = 8


def add_default_producers(config: PickerConfig, registry: Registry) -> PickerConfig:
    """``config`` with the default producers its consumers need; raises ConfigError."""
    from kvgate.config.build import roles_of, trial_context  # build imports this module

    ctx = trial_context()
    built: dict[str, Plugin] = {}
    for spec in config.plugins:
        try:
            built[spec.name] = registry.create(spec.canonical_type, spec.name, spec.parameters, ctx)
        except (KeyError, PluginParameterError):
            continue  # the loader reports these with their field paths
        ctx.plugins[spec.name] = built[spec.name]
    if not any(isinstance(p, Consumer) for p in built.values()):
        return config
    specs = list(config.plugins)
    problems: list[Problem] = []
    for _ in range(_MAX_ROUNDS):
        missing = _missing_keys(built)
        if not missing:
            break
        added = 0
        for key, consumer in missing.items():
            default_type = registry.default_producer(key.data_type)
            existing = built.get(key.producer_name)
            if existing is not None or default_type != key.producer_name:
                problems.append(_unproduced(config.source, consumer, key, existing))
                continue
            plugin = registry.create(default_type, default_type, None, ctx)
            built[default_type] = ctx.plugins[default_type] = plugin
            specs.append(_added_spec(plugin, default_type, roles_of(plugin), registry))
            added += 1
        if problems or not added:
            break
    try:
        order_producers([p for p in built.values() if isinstance(p, Producer)])
    except ValueError as exc:
        problems.append(Problem(config.source, "plugins", str(exc)))
    if problems:
        raise ConfigError(problems)
    if len(specs) == len(config.plugins):
        return config
    return dataclasses.replace(config, plugins=tuple(specs))


def _missing_keys(built: dict[str, Plugin]) -> dict[DataKey, str]:
    """Consumed keys no plugin produces -> the first consumer (in declared order)."""
    produced = {key for p in built.values() if isinstance(p, Producer) for key in p.produces()}
    missing: dict[DataKey, str] = {}
    for name, plugin in built.items():
        if isinstance(plugin, Consumer):
            for key in plugin.consumes():
                if key not in produced:
                    missing.setdefault(key, name)
    return missing


def _unproduced(source: str, consumer: str, key: DataKey, existing: Plugin | None) -> Problem:
    if existing is None:
        what = (
            f"which is not configured (add a plugin named {key.producer_name!r} that produces it)"
        )
    else:
        what = f"but that plugin (type {existing.type_name}) does not produce it"
    return Problem(
        source,
        f"plugins[{consumer}]",
        f"consumes {key.data_type} from producer {key.producer_name!r}, {what}",
    )


def _added_spec(
    plugin: Plugin, type_name: str, roles: frozenset[str], registry: Registry
) -> PluginSpec:
    effective: dict[str, Any] = dict(getattr(registry, "last_parameters", {}))
    return PluginSpec(
        name=plugin.name,
        type=type_name,
        canonical_type=type_name,
        parameters={},
        roles=roles,
        effective_parameters=effective,
        added_by_default=True,
    )
