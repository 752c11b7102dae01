"""Type name -> factory, filled once by :func:`register_builtins`.

Each built-in plugin module exports ``TYPE`` (llm-d's type name), ``create`` (the factory)
and optionally ``ALIASES`` (older names that still load, e.g. ``kv-cache-scorer``) and
``DEFAULT_PRODUCER_FOR`` (data types it is the default producer of, added when a consumer
needs one and none is configured, as llm-d's ``RegisterAsDefaultProducer``). llm-d types
kvgate cannot act on are registered as rejections (kvgate.plugins.unsupported): loading one
fails with its reason instead of "unknown type".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from kvgate.errors import PluginParameterError
from kvgate.plugins import unsupported
from kvgate.plugins.base import Params, Plugin, PluginContext, PluginFactory
from kvgate.plugins.datalayer import unsupported as datalayer_unsupported

#: Modules holding one built-in plugin each; the order is the order of ``known types`` in errors.
BUILTIN_MODULES: tuple[str, ...] = (
    "kvgate.plugins.filters.by_label",
    "kvgate.plugins.filters.label_selector_filter",
    "kvgate.plugins.filters.decode_filter",
    "kvgate.plugins.filters.prefill_filter",
    "kvgate.plugins.scorers.queue_scorer",
    "kvgate.plugins.scorers.kv_cache_utilization_scorer",
    "kvgate.plugins.scorers.running_requests_size_scorer",
    "kvgate.plugins.scorers.load_aware_scorer",
    "kvgate.plugins.scorers.active_request_scorer",
    "kvgate.plugins.scorers.session_affinity_scorer",
    "kvgate.plugins.scorers.lora_affinity_scorer",
    "kvgate.plugins.scorers.prefix_cache_scorer",
    "kvgate.plugins.scorers.no_hit_lru_scorer",
    "kvgate.plugins.scorers.precise_prefix_cache_scorer",
    "kvgate.plugins.scorers.oracle_prefix_scorer",
    "kvgate.plugins.pickers.max_score_picker",
    "kvgate.plugins.pickers.random_picker",
    "kvgate.plugins.pickers.weighted_random_picker",
    "kvgate.plugins.pickers.round_robin_picker",
    "kvgate.plugins.profiles.single_profile_handler",
    "kvgate.plugins.profiles.pd_profile_handler",
    "kvgate.plugins.profiles.prefill_header_handler",
    # llm-d-router's data producers and their consumers (brief D2)
    "kvgate.plugins.producers.token_producer",
    "kvgate.plugins.producers.approx_prefix_cache_producer",
    "kvgate.plugins.producers.precise_prefix_cache_producer",
    "kvgate.plugins.producers.inflight_load_producer",
    "kvgate.plugins.producers.burst_prefix_cache_producer",
    "kvgate.plugins.producers.p2p_source_producer",
    "kvgate.plugins.filters.prefix_cache_affinity_filter",
    "kvgate.plugins.filters.encode_filter",
    "kvgate.plugins.scorers.token_load_scorer",
    "kvgate.plugins.profiles.data_parallel_profile_handler",
    # predicted-latency routing (brief R)
    "kvgate.plugins.producers.predicted_latency_producer",
    "kvgate.plugins.scorers.latency_scorer",
    "kvgate.plugins.filters.slo_headroom_tier_filter",
    "kvgate.plugins.admitters.latency_slo_admitter",
    "kvgate.plugins.admitters.probabilistic_admitter",
    # P/D disaggregation, llm-d-router's generation (brief L)
    "kvgate.plugins.profiles.disagg_profile_handler",
    "kvgate.plugins.profiles.prefix_based_pd_decider",
    "kvgate.plugins.profiles.always_disagg_pd_decider",
    "kvgate.plugins.profiles.disagg_headers_handler",
    # multimodal E/P/D (issue #22)
    "kvgate.plugins.profiles.always_disagg_multimodal_decider",
    "kvgate.plugins.producers.mm_embeddings_cache_producer",
    "kvgate.plugins.scorers.mm_embeddings_cache_scorer",
    # data layer and request handling (config generations, brief D1)
    "kvgate.plugins.datalayer.metrics_data_source",
    "kvgate.plugins.datalayer.core_metrics_extractor",
    "kvgate.plugins.datalayer.endpoint_notification_source",
    "kvgate.plugins.datalayer.models_data_source",
    "kvgate.plugins.datalayer.models_data_extractor",
    "kvgate.plugins.requesthandling.openai_parser",
    "kvgate.plugins.requesthandling.passthrough_parser",
    "kvgate.plugins.requesthandling.vertexai_parser",
    "kvgate.plugins.requesthandling.vllmgrpc_parser",
    "kvgate.plugins.requestheader.agent_identity",
    "kvgate.plugins.requestcontrol.request_attribute_reporter",
    "kvgate.plugins.requestcontrol.disaggregatedset_rollout_screener",
    "kvgate.plugins.scorers.header_label_affinity_scorer",
    # llm-d's test doubles, so its own test configs run unchanged (kvgate.plugins.testdoubles)
    "kvgate.plugins.testdoubles.test_one",
    "kvgate.plugins.testdoubles.test_two",
    "kvgate.plugins.testdoubles.test_picker",
    "kvgate.plugins.testdoubles.test_profile_handler",
    "kvgate.plugins.testdoubles.test_source",
    "kvgate.plugins.testdoubles.test_extractor",
    "kvgate.plugins.testdoubles.mock_metrics_source",
    # GIE's conformance-suite test plugins
    "kvgate.plugins.conformance.header_based_testing_filter",
    "kvgate.plugins.conformance.destination_endpoint_served_verifier",
    # flow control (brief A): saturation detectors, fairness/ordering/usage-limit policies
    "kvgate.flowcontrol.detectors.utilization",
    "kvgate.flowcontrol.detectors.concurrency",
    "kvgate.flowcontrol.policies.global_strict",
    "kvgate.flowcontrol.policies.round_robin",
    "kvgate.flowcontrol.policies.fcfs",
    "kvgate.flowcontrol.policies.edf",
    "kvgate.flowcontrol.policies.static_usage_limit",
    "kvgate.flowcontrol.policies.soft_reflective_ceiling",
    "kvgate.flowcontrol.policies.program_aware",
)


class Registry:
    """Maps llm-d type names to factories."""

    def __init__(self) -> None:
        self._factories: dict[str, PluginFactory] = {}
        self._aliases: dict[str, str] = {}
        self._default_producers: dict[str, str] = {}  # data type -> producer type
        self._rejected: dict[str, str] = {}  # type -> why kvgate cannot run it

    def register(self, type_name: str, factory: PluginFactory, *aliases: str) -> None:
        if type_name in self._factories or type_name in self._aliases:
            raise ValueError(f"plugin type {type_name!r} registered twice")
        self._factories[type_name] = factory
        for alias in aliases:
            self._aliases[alias] = type_name

    def set_default_producer(self, data_type: str, type_name: str) -> None:
        """Make ``type_name`` the producer added when ``data_type`` is consumed but not produced."""
        self._default_producers[data_type] = type_name

    def default_producer(self, data_type: str) -> str | None:
        """The type of ``data_type``'s default producer (also its default plugin name)."""
        return self._default_producers.get(data_type)

    def reject(self, type_name: str, reason: str) -> None:
        """Register an llm-d type kvgate cannot run: creating it fails with ``reason``."""

        def refuse(name: str, params: Params, ctx: PluginContext) -> Plugin:
            raise PluginParameterError("", f"plugin type {type_name!r} is not supported: {reason}")

        self.register(type_name, refuse)
        self._rejected[type_name] = reason

    def rejected(self) -> dict[str, str]:
        """Registered-but-refused types and why."""
        return dict(self._rejected)

    def canonical(self, type_name: str) -> str | None:
        """The registered type for ``type_name`` (resolving aliases), or None if unknown."""
        if type_name in self._factories:
            return type_name
        return self._aliases.get(type_name)

    def known_types(self) -> list[str]:
        return sorted(t for t in self._factories if t not in self._rejected)

    def create(
        self,
        type_name: str,
        name: str,
        parameters: Mapping[str, Any] | None,
        ctx: PluginContext,
    ) -> Plugin:
        """Build a plugin; raises KeyError for unknown types, PluginParameterError for bad params."""
        canonical = self.canonical(type_name)
        if canonical is None:
            raise KeyError(type_name)
        params = Params(parameters)
        plugin = self._factories[canonical](name, params, ctx)
        params.check_unknown()
        if not isinstance(plugin, Plugin):  # pragma: no cover - a programming error
            raise PluginParameterError("", f"factory for {type_name!r} returned a non-plugin")
        return plugin


_DEFAULT: Registry | None = None


def register_builtins(registry: Registry) -> Registry:
    """Register every built-in plugin module into ``registry``; returns it."""
    for module_name in BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not written yet; other import errors are bugs
                continue
            raise
        registry.register(module.TYPE, module.create, *getattr(module, "ALIASES", ()))
        for data_type in getattr(module, "DEFAULT_PRODUCER_FOR", ()):
            registry.set_default_producer(data_type, module.TYPE)
    for type_name, reason in unsupported.UNSUPPORTED.items():
        if registry.canonical(type_name) is None:  # a real plugin, once written, wins
            registry.reject(type_name, reason)
    # data-layer and parser types kvgate cannot act on (brief D1)
    for type_name, reason in datalayer_unsupported.UNSUPPORTED.items():
        if registry.canonical(type_name) is None:
            registry.reject(type_name, reason)
    return registry


def default_registry() -> Registry:
    """The process-wide registry with every built-in plugin."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = register_builtins(Registry())
    return _DEFAULT
