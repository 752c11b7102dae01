"""The ``dataLayer`` (GIE v1.3-1.4: ``data``) and ``requestHandler`` / ``parser`` sections.

llm-d's data layer is a graph of sources and extractors; kvgate's is one scraper per
endpoint (:class:`kvgate.endpoints.scrape.Scraper`) and the endpoint pool. This module turns
the wired plugins into :class:`DataLayerConfig`, the scraper's settings, and refuses whatever
the scraper cannot do, one line each. Rules, as llm-d's loader applies them:

* Unless ``injectDefaults: false``, a ``metrics-data-source`` with a
  ``core-metrics-extractor`` is added when no metrics source is wired (reusing plugins of
  those default names when declared), so an empty section still scrapes ``/metrics``.
* ``injectDefaults: false`` and no metrics source: metrics collection is off
  (``DataLayerConfig.metrics is None``).
* The ``enableLegacyMetrics`` gate turns the data layer off: the front door's
  ``--*-metric`` flags drive scraping, and a ``dataLayer`` section is then an error.
* GIE's ``data`` section needs the ``dataLayer`` gate (GIE v1.3-1.4), except beside a
  top-level ``parser`` (GIE's main branch after the data layer went on by default).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kvgate.config.documents import describe
from kvgate.config.fields import Problems, as_list, as_mapping, check_fields, required_str
from kvgate.config.generations import PARSER_DEPRECATION, Generation
from kvgate.endpoints.promtext import MetricNames
from kvgate.plugins.datalayer.base import DataExtractor, DataSource
from kvgate.plugins.datalayer.core_metrics_extractor import (
    DEFAULT_ENGINE,
    ENGINE_LABEL_KEY,
    LEGACY_ENGINE_LABEL_KEY,
    CoreMetricsExtractor,
    builtin_engines,
)
from kvgate.plugins.datalayer.metrics_data_source import MetricsDataSource, MetricsSourceSettings
from kvgate.plugins.datalayer.models_data_source import ModelsDataSource
from kvgate.plugins.requesthandling import ClaimingParser, RequestParser
from kvgate.plugins.requesthandling.openai_parser import OpenAIParser
from kvgate.plugins.requesthandling.passthrough_parser import PassthroughParser
from kvgate.plugins.testdoubles.mock_metrics_source import MockMetricsSource
from kvgate.scheduling.types import Metrics

METRICS_SOURCE_TYPE = "metrics-data-source"
METRICS_EXTRACTOR_TYPE = "core-metrics-extractor"

#: The parser types kvgate acts on, for messages.
PARSER_TYPES = ("openai-parser", "passthrough-parser", "vertexai-parser", "vllmgrpc-parser")
_SOURCE_FIELDS = ("pluginRef", "extractors")
_REF_FIELDS = ("pluginRef",)
_SINGLE_REPLICA = "kvgate runs one scheduler replica; it has no cross-replica state sync"
_NO_DISCOVERY = (
    "kvgate has no discovery plugins: endpoints come from --endpoint, --endpoints-file or "
    "the InferencePool watch"
)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """How the scraper reads ``/metrics``: the source's settings and the extractor's names."""

    source: MetricsSourceSettings = field(default_factory=MetricsSourceSettings)
    engines: Mapping[str, MetricNames] = field(
        default_factory=lambda: MappingProxyType(builtin_engines())
    )
    engine_label_key: str = ENGINE_LABEL_KEY
    default_engine: str = DEFAULT_ENGINE
    source_plugin: str = METRICS_SOURCE_TYPE  # plugin names, for messages
    extractor_plugin: str = METRICS_EXTRACTOR_TYPE
    injected: bool = False  # added by the injectDefaults rule
    #: mock-metrics-source's table (endpoint name or host:port -> metrics): served instead
    #: of scraping /metrics
    static: Mapping[str, Metrics] | None = None

    def names_for(self, labels: Mapping[str, str]) -> MetricNames:
        """Metric names for an endpoint with ``labels`` (its engine label, else the default)."""
        engine = labels.get(self.engine_label_key) or labels.get(LEGACY_ENGINE_LABEL_KEY)
        names = self.engines.get(engine) if engine else None
        return names if names is not None else self.engines[self.default_engine]


@dataclass(frozen=True, slots=True)
class DataLayerConfig:
    """What the front doors' scraper and pool do, from the data-layer section.

    ``metrics`` None means metrics collection is off (``injectDefaults: false``, no metrics
    source); ``legacy_metrics`` means the ``enableLegacyMetrics`` gate: the front door's
    metric flags apply and ``metrics`` is None. ``endpoint_listeners`` are the plugins wired to
    ``endpoint-notification-source`` (told of endpoint removals by the pool).
    """

    metrics: MetricsSettings | None = field(default_factory=MetricsSettings)
    legacy_metrics: bool = False
    endpoint_listeners: tuple[str, ...] = ()
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (source, extractors) as wired
    #: a models-data-source's settings; None: kvgate's own /v1/models polling (every 5 s)
    models: MetricsSourceSettings | None = None
    section: str = "dataLayer"  # the field it came from (``data`` in GIE v1.3-1.4)

    def scraper_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`kvgate.endpoints.scrape.Scraper` that make it act as
        this data layer: scheme, path, port, TLS, interval and per-engine metric names.

        Empty under ``enableLegacyMetrics`` and for the source llm-d injects by default: there,
        as in llm-d, the front door's flags (``--model-server-metrics-scheme``, ``--*-metric``,
        ...) configure the scrape. With metrics collection off, only ``collect_metrics=False``. The caller passes its own
        pool, timeouts and health settings; ``interval_s`` is present only when the source
        set ``interval``.
        """
        kwargs = self._models_kwargs()
        if self.legacy_metrics:
            return kwargs
        if self.metrics is None:
            return {**kwargs, "collect_metrics": False}
        metrics = self.metrics
        if metrics.static is not None:
            return {**kwargs, "static_metrics": metrics.static}
        if metrics.injected:
            return kwargs
        src = metrics.source
        kwargs.update(
            {
                "scheme": src.scheme,
                "metrics_path": src.path,
                "metrics_port": src.port,
                "verify_tls": not src.insecure_skip_verify,
                "ssl_context": tls_context(src),
                "names": metrics.engines[metrics.default_engine],
                "names_for": lambda endpoint: metrics.names_for(endpoint.labels),
            }
        )
        if src.interval_s is not None:
            kwargs["interval_s"] = src.interval_s
        return kwargs

    def _models_kwargs(self) -> dict[str, Any]:
        """The scraper's ``models_*`` settings from a models-data-source (none without one)."""
        src = self.models
        if src is None:
            return {}
        ctx = tls_context(src)
        if ctx is None:  # its own setting, never the session's (the metrics source's)
            ctx = ssl.create_default_context() if not src.insecure_skip_verify else None
        return {
            "models_scheme": src.scheme,
            "models_path": src.path,
            # llm-d: no interval means every base tick
            "models_interval_s": src.interval_s if src.interval_s is not None else 0.0,
            "models_ssl": ctx if ctx is not None else False,
        }


def tls_context(src: MetricsSourceSettings) -> ssl.SSLContext | None:
    """The TLS context for scraping over https, or None when the defaults do (no CA, no mTLS)."""
    if src.ca_cert_path is None and src.client_cert_path is None:
        return None
    ctx = ssl.create_default_context(cafile=src.ca_cert_path)
    if src.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if src.client_cert_path is not None and src.client_key_path is not None:
        ctx.load_cert_chain(src.client_cert_path, src.client_key_path)
    return ctx


@dataclass(frozen=True, slots=True)
class RequestHandlerConfig:
    """The parsers named by ``requestHandler.parsers`` (or ``parser``); () = the default.

    ``passthrough``: the one parser is ``passthrough-parser`` (bodies are forwarded unparsed
    and requests scheduled without a prompt; kvgate.requestcontrol.passthrough). ``claiming``:
    the listed parsers that claim paths and read their bodies (gRPC: ``vertexai-parser``,
    ``vllmgrpc-parser``; kvgate.requestcontrol.parsers); ``openai``: whether the paths they do
    not claim are parsed as OpenAI (``openai-parser`` listed, or no parser listed).
    """

    parsers: tuple[str, ...] = ()
    passthrough: bool = False
    claiming: tuple[str, ...] = ()
    openai: bool = True


def data_layer(
    problems: Problems,
    data: Mapping[str, Any],
    gen: Generation,
    gates: list[str],
    plugins: Mapping[str, object | None],
    types: Mapping[str, str],
) -> DataLayerConfig:
    """Validate the data-layer section of ``data`` and resolve it (see the module rules).

    ``plugins`` maps declared names to their trial-built objects (None when they failed to
    build; their problem is already reported); ``types`` maps names to canonical types.
    """
    key = "data" if data.get("data") is not None and data.get("dataLayer") is None else "dataLayer"
    # a section this generation does not have is already reported (renamed or unknown)
    raw = data.get(key) if key in gen.top_fields else None
    if data.get("data") is not None and data.get("dataLayer") is not None:
        problems.add("data", "give either 'data' (GIE v1.3-1.4) or 'dataLayer', not both")
    legacy = "enableLegacyMetrics" in gates
    section: dict[str, Any] = {}
    if raw is not None:
        section = as_mapping(problems, key, raw) or {}
        # GIE's main branch between #2639 (data layer on by default) and v1.5 (``data``
        # renamed ``dataLayer``) took ``data`` without the gate; a file with the top-level
        # ``parser`` of that era is one of those (llm-d-router's igw integration configs).
        if key == "data" and "dataLayer" not in gates and data.get("parser") is None:
            problems.add(
                "data", "allowed only with the dataLayer feature gate (add it to featureGates)"
            )
        if legacy:
            problems.add(
                key,
                "the enableLegacyMetrics feature gate turns the data layer off (llm-d skips "
                "this section); remove the gate or the section",
            )
        _check_section(problems, key, section, gen)
    wired: list[tuple[str, tuple[str, ...]]] = []
    metrics: MetricsSettings | None = None
    models: ModelsDataSource | None = None
    listeners: list[str] = []
    used: set[str] = set()
    for i, src in enumerate(as_list(problems, f"{key}.sources", section.get("sources"))):
        path = f"{key}.sources[{i}]"
        if not isinstance(src, dict):
            problems.add(path, f"expected a mapping with 'pluginRef', got {describe(src)}")
            continue
        check_fields(problems, path, src, _SOURCE_FIELDS)
        name = _ref(problems, path, src, plugins)
        extractors: list[str] = []
        for j, ext in enumerate(as_list(problems, f"{path}.extractors", src.get("extractors"))):
            ext_path = f"{path}.extractors[{j}]"
            if not isinstance(ext, dict):
                problems.add(ext_path, f"expected a mapping with 'pluginRef', got {describe(ext)}")
                continue
            check_fields(problems, ext_path, ext, _REF_FIELDS)
            ext_name = _ref(problems, ext_path, ext, plugins)
            if ext_name is not None:
                extractors.append(ext_name)
                used.add(ext_name)
        if name is None:
            continue
        used.add(name)
        wired.append((name, tuple(extractors)))
        source = plugins.get(name)
        if source is None:
            continue
        if not isinstance(source, DataSource):
            problems.add(
                f"{path}.pluginRef",
                f"plugin {name!r} (type {types.get(name)!r}) is not a data source "
                f"(kvgate's: {METRICS_SOURCE_TYPE}, endpoint-notification-source)",
            )
            continue
        if isinstance(source, MetricsDataSource | MockMetricsSource):
            if metrics is not None:
                problems.add(
                    f"{path}.pluginRef",
                    f"a second metrics source ({metrics.source_plugin!r} is the first); "
                    "kvgate scrapes one metrics page per endpoint",
                )
                continue
            if isinstance(source, MockMetricsSource):
                metrics = _mock_metrics(problems, path, source, extractors)
            else:
                metrics = _metrics(problems, path, source, extractors, plugins, types)
        elif isinstance(source, ModelsDataSource):
            if models is not None:
                problems.add(
                    f"{path}.pluginRef",
                    f"a second models source ({models.name!r} is the first); kvgate polls "
                    "one model listing per endpoint",
                )
                continue
            _check_inputs(problems, path, "models", extractors, plugins, types)
            models = source
        elif source.source_kind == "nothing":
            _check_inputs(problems, path, "nothing", extractors, plugins, types)
        else:
            listeners.extend(_listeners(problems, path, extractors, plugins))
    inject = section.get("injectDefaults", True)
    if not isinstance(inject, bool):
        problems.add(f"{key}.injectDefaults", f"expected true or false, got {describe(inject)}")
        inject = True
    if metrics is None and inject and not legacy:
        metrics = _injected(plugins, used)
        used.update((metrics.source_plugin, metrics.extractor_plugin))
    for name, obj in plugins.items():
        if name not in used and isinstance(obj, DataSource | DataExtractor):
            problems.add(
                f"plugins[{name}]",
                f"data-layer plugin is declared but not wired into {key}.sources, so it would "
                "do nothing; wire it or remove it",
            )
    return DataLayerConfig(
        metrics=None if legacy else metrics,
        legacy_metrics=legacy,
        endpoint_listeners=tuple(listeners),
        sources=tuple(wired),
        section=key,
        models=models.settings if models is not None else None,
    )


def _check_section(problems: Problems, key: str, section: dict[str, Any], gen: Generation) -> None:
    for name in section:
        renamed = gen.renamed.get(f"dataLayer.{name}")
        if renamed is not None:
            problems.add(f"{key}.{name}", f"{renamed} (apiVersion {gen.api_version})")
        elif name not in gen.data_layer_fields:
            problems.add(
                f"{key}.{name}",
                f"unknown field in apiVersion {gen.api_version} "
                f"(known: {', '.join(gen.data_layer_fields)})",
            )
    discovery = section.get("discovery")
    if isinstance(discovery, dict):
        for name in discovery:
            renamed = gen.renamed.get(f"dataLayer.discovery.{name}")
            if renamed is not None:
                problems.add(f"{key}.discovery.{name}", f"{renamed} (apiVersion {gen.api_version})")
    for name in ("discovery", "peerDiscovery"):
        if section.get(name) is not None:
            problems.add(f"{key}.{name}", _NO_DISCOVERY)
    for name in (
        "crossReplica",
        "crossReplicaSyncerPluginRef",
        "crossReplicaSyncInterval",
        "crossReplicaPublishTimeout",
    ):
        if name in gen.data_layer_fields and section.get(name) is not None:
            problems.add(f"{key}.{name}", _SINGLE_REPLICA)


def _ref(
    problems: Problems, path: str, entry: Mapping[str, Any], plugins: Mapping[str, object | None]
) -> str | None:
    name = required_str(problems, path, entry, "pluginRef")
    if name is not None and name not in plugins:
        problems.add(
            f"{path}.pluginRef",
            f"unknown plugin {name!r} (known: {', '.join(plugins) or 'none declared'})",
        )
        return None
    return name


def _metrics(
    problems: Problems,
    path: str,
    source: MetricsDataSource,
    extractors: list[str],
    plugins: Mapping[str, object | None],
    types: Mapping[str, str],
) -> MetricsSettings:
    found: CoreMetricsExtractor | None = None
    for j, name in enumerate(extractors):
        ext = plugins.get(name)
        if ext is None:
            continue
        if not isinstance(ext, CoreMetricsExtractor):
            problems.add(
                f"{path}.extractors[{j}].pluginRef",
                f"plugin {name!r} (type {types.get(name)!r}) cannot read a metrics page "
                f"(kvgate's metrics extractor: {METRICS_EXTRACTOR_TYPE})",
            )
        elif found is not None:
            problems.add(
                f"{path}.extractors[{j}].pluginRef",
                f"a second {METRICS_EXTRACTOR_TYPE} ({found.name!r} is the first); kvgate "
                "reads one set of metric names per engine",
            )
        else:
            found = ext
    if found is None:
        return MetricsSettings(
            source=source.settings, source_plugin=source.name, extractor_plugin=""
        )
    return MetricsSettings(
        source=source.settings,
        engines=found.engines,
        engine_label_key=found.engine_label_key,
        default_engine=found.default_engine,
        source_plugin=source.name,
        extractor_plugin=found.name,
    )


def _mock_metrics(
    problems: Problems, path: str, source: MockMetricsSource, extractors: list[str]
) -> MetricsSettings:
    if extractors:
        problems.add(
            f"{path}.extractors",
            f"{source.type_name} writes endpoint metrics itself and runs no extractor "
            "(llm-d's double ignores them); remove the extractors",
        )
    return MetricsSettings(source_plugin=source.name, extractor_plugin="", static=source.metrics)


def _check_inputs(
    problems: Problems,
    path: str,
    kind: str,
    extractors: list[str],
    plugins: Mapping[str, object | None],
    types: Mapping[str, str],
) -> None:
    """Each extractor wired to a source must read what that source produces."""
    for j, name in enumerate(extractors):
        ext = plugins.get(name)
        if ext is not None and (not isinstance(ext, DataExtractor) or ext.input_kind != kind):
            problems.add(
                f"{path}.extractors[{j}].pluginRef",
                f"plugin {name!r} (type {types.get(name)!r}) does not read what this source "
                f"produces ({kind})",
            )


def _listeners(
    problems: Problems, path: str, extractors: list[str], plugins: Mapping[str, object | None]
) -> list[str]:
    from kvgate.plugins.base import EndpointListener

    names: list[str] = []
    for j, name in enumerate(extractors):
        ext = plugins.get(name)
        if ext is None:
            continue
        if not isinstance(ext, EndpointListener):
            problems.add(
                f"{path}.extractors[{j}].pluginRef",
                f"plugin {name!r} does not react to endpoint changes (it has no "
                "endpoints_removed), so wiring it here would do nothing",
            )
        else:
            names.append(name)
    return names


def _injected(plugins: Mapping[str, object | None], used: set[str]) -> MetricsSettings:
    """llm-d's injected default metrics source, reusing declared plugins of the default names."""
    source = plugins.get(METRICS_SOURCE_TYPE)
    ext = plugins.get(METRICS_EXTRACTOR_TYPE)
    settings = source.settings if isinstance(source, MetricsDataSource) else MetricsSourceSettings()
    if isinstance(ext, CoreMetricsExtractor):
        return MetricsSettings(
            source=settings,
            engines=ext.engines,
            engine_label_key=ext.engine_label_key,
            default_engine=ext.default_engine,
            injected=True,
        )
    return MetricsSettings(source=settings, injected=True)


def request_handler(
    problems: Problems,
    data: Mapping[str, Any],
    plugins: Mapping[str, object | None],
    warnings: list[str],
) -> RequestHandlerConfig:
    """``requestHandler.parsers`` (llm-d) or the deprecated top-level ``parser`` (GIE v1.5)."""
    refs: list[tuple[str, str]] = []  # (path, plugin name)
    handler = data.get("requestHandler")
    if handler is not None:
        section = as_mapping(problems, "requestHandler", handler) or {}
        check_fields(problems, "requestHandler", section, ("parsers", "parser"))
        entries = [
            (f"requestHandler.parsers[{i}]", entry)
            for i, entry in enumerate(
                as_list(problems, "requestHandler.parsers", section.get("parsers"))
            )
        ]
        if "parser" in section:  # llm-d-router's one-parser shape before the list
            if "parsers" in section:
                problems.add("requestHandler.parser", "give either 'parser' or 'parsers', not both")
            entries.append(("requestHandler.parser", section["parser"]))
        for path, entry in entries:
            if not isinstance(entry, dict):
                problems.add(path, f"expected a mapping with 'pluginRef', got {describe(entry)}")
                continue
            check_fields(problems, path, entry, _REF_FIELDS)
            name = _ref(problems, path, entry, plugins)
            if name is not None:
                refs.append((path, name))
    parser = data.get("parser")
    if parser is not None:
        warnings.append(PARSER_DEPRECATION)
        section = as_mapping(problems, "parser", parser) or {}
        check_fields(problems, "parser", section, _REF_FIELDS)
        name = _ref(problems, "parser", section, plugins)
        # llm-d: "If both are set, the new field is used" -- kvgate says so instead.
        if handler is not None:
            problems.add(
                "parser", "give either 'parser' (deprecated) or 'requestHandler', not both"
            )
        elif name is not None:
            refs.append(("parser", name))
    parsers: list[str] = []
    passthrough: list[str] = []
    claiming: list[str] = []
    openai = not refs
    for path, name in refs:
        obj = plugins.get(name)
        if obj is not None and not isinstance(obj, RequestParser):
            problems.add(
                f"{path}.pluginRef",
                f"plugin {name!r} is not a parser (kvgate's: {', '.join(PARSER_TYPES)})",
            )
            continue
        if isinstance(obj, PassthroughParser):
            passthrough.append(name)
        elif isinstance(obj, ClaimingParser):
            claiming.append(name)
        elif isinstance(obj, OpenAIParser):
            openai = True
        parsers.append(name)
    if passthrough and len(parsers) > 1:
        problems.add(
            "requestHandler.parsers",
            f"{passthrough[0]!r} (passthrough-parser) must be the only parser: kvgate either "
            "parses every body as OpenAI or none; remove the others",
        )
    for name, obj in plugins.items():
        if isinstance(obj, RequestParser) and name not in parsers:
            problems.add(
                f"plugins[{name}]",
                "parser is declared but not listed in requestHandler.parsers, so it would do "
                "nothing; list it or remove it",
            )
    return RequestHandlerConfig(
        tuple(parsers), passthrough=bool(passthrough), claiming=tuple(claiming), openai=openai
    )
