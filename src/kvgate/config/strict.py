"""``kvgate config check --strict``: every way kvgate would run a config differently from llm-d.

:func:`strict_differences` lists, one line each:

* the generation's notes (an apiVersion llm-d's loader does not register);
* plugin types that run as another type (aliases) and kvgate-only types llm-d rejects;
* plugin-level differences a built plugin reports through an optional ``strict_notes``
  attribute (a sequence of strings; e.g. a parameter kvgate accepts but does not contact);
* an llm-d.ai config's ``prefix-cache-scorer`` without a prefix producer (kvgate keeps GIE's
  per-scorer index where llm-d's router adds ``approx-prefix-cache-producer``);
* data-layer differences (extra metric names read, scrape interval not rounded, a metrics
  source without an extractor) and the default parsers;
* the ``prepareDataPlugins`` gate, whose behaviour kvgate always has.

An empty list means kvgate runs the config as llm-d would, as far as kvgate knows.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.config.build import build_scheduler
from kvgate.config.generations import GIE, LLMD_V1, LLMD_V1ALPHA1, generation
from kvgate.config.model import PickerConfig
from kvgate.plugins.scorers.prefix_cache_scorer import DEFAULT_PRODUCER, PrefixCacheScorer

#: kvgate's own plugin types, which no llm-d loader registers.
KVGATE_ONLY_TYPES: dict[str, str] = {
    "round-robin-picker": "a kvgate benchmark baseline",
    "oracle-prefix-cache-scorer": "a kvgate benchmark upper bound",
}


def strict_differences(config: PickerConfig) -> list[str]:
    """Every known difference between kvgate's run of ``config`` and llm-d's, one line each."""
    out: list[str] = []
    gen = generation(config.api_version)
    if gen is not None:
        out.extend(gen.strict_notes)
    for spec in config.plugins:
        where = f"plugins[{spec.name}]"
        if spec.type != spec.canonical_type:
            out.append(f"{where}: type {spec.type!r} runs as kvgate's {spec.canonical_type!r}")
        if spec.canonical_type in KVGATE_ONLY_TYPES:
            out.append(
                f"{where}: type {spec.canonical_type!r} is kvgate's own "
                f"({KVGATE_ONLY_TYPES[spec.canonical_type]}); llm-d rejects it"
            )
    scheduler = build_scheduler(config)
    for plugin in scheduler.plugins:
        notes = getattr(plugin, "strict_notes", ())
        if isinstance(notes, Sequence) and not isinstance(notes, str):
            out.extend(f"plugins[{plugin.name}]: {note}" for note in notes)
    if config.api_version in (LLMD_V1ALPHA1, LLMD_V1):
        out.extend(_standalone_prefix_scorers(scheduler.plugins))
    out.extend(_data_layer(config))
    if (
        config.api_version in (LLMD_V1ALPHA1, LLMD_V1, GIE)
        and config.request_handler is not None
        and not config.request_handler.parsers
    ):
        out.append(
            "requestHandler: no parsers configured: llm-d's current router then parses OpenAI, "
            "Anthropic Messages and vLLM /inference/v1/generate and passes other paths "
            "through; kvgate parses the OpenAI API only"
        )
    if "test-feature-gate" in config.feature_gates:
        out.append(
            "featureGates: test-feature-gate: llm-d registers it only in its config-loader "
            "tests (its router rejects it); it turns nothing on in either"
        )
    if config.flow_control is not None and config.flow_control.enable_eviction:
        out.append(
            "flowControl.enableEviction: llm-d's flow_control_reclaim_target and "
            "pending_reclaim gauges and its revocation-confirmation histogram are not exported"
        )
    if "prepareDataPlugins" in config.feature_gates:
        out.append(
            "featureGates: prepareDataPlugins: kvgate always runs data producers, so the gate "
            "changes nothing (GIE v1.3-1.4 run them only with it; llm-d dropped the gate)"
        )
    return out


def _standalone_prefix_scorers(plugins: Sequence[object]) -> list[str]:
    """llm-d-router's prefix-cache-scorer is stateless: naming no producer, it reads the
    approx-prefix-cache-producer llm-d adds; kvgate then keeps GIE's per-scorer index."""
    if any(getattr(p, "name", None) == DEFAULT_PRODUCER for p in plugins):
        return []  # the scorers read that producer's matches, as llm-d's
    return [
        f"plugins[{p.name}]: names no prefix producer and none is named {DEFAULT_PRODUCER}: "
        "kvgate keeps the scorer's own "
        "approximate index (GIE's plugin: blocks of the endpoint's vLLM block size, at most "
        "maxPrefixBlocksToMatch 256); llm-d's router adds approx-prefix-cache-producer "
        "(blocks of at least 64 tokens, up to 131072 tokens) and scores its matches, so partial "
        "matches can score differently"
        for p in plugins
        if isinstance(p, PrefixCacheScorer) and not p.producer_name
    ]


def _data_layer(config: PickerConfig) -> list[str]:
    dl = config.data_layer
    if dl is None or dl.metrics is None:
        return []
    out: list[str] = []
    metrics = dl.metrics
    if metrics.static is not None:  # mock-metrics-source: neither engine names nor scrapes
        return [
            f"{dl.section}: {metrics.source_plugin}: llm-d's test harness fills the double's "
            "metrics from the test and still adds the default metrics-data-source; kvgate "
            "takes them from the 'metrics' parameter and scrapes no /metrics beside it"
        ]
    where = f"{dl.section}" if not metrics.injected else f"{dl.section} (injected defaults)"
    vllm = metrics.engines.get("vllm")
    if vllm is not None and vllm.kv_usage_fallback is not None:
        out.append(
            f"{where}: engine 'vllm': kvgate also reads {vllm.kv_usage_fallback} when "
            f"{vllm.kv_usage} is absent (vLLM < 0.10); llm-d reads only the latter"
        )
    if metrics.source.interval_s is not None:
        out.append(
            f"{where}: {metrics.source_plugin}.interval: kvgate scrapes every "
            f"{metrics.source.interval_s:g}s exactly; llm-d rounds it to a multiple of "
            "--refresh-metrics-interval"
        )
    if not metrics.extractor_plugin and not metrics.injected:
        out.append(
            f"{where}: source {metrics.source_plugin!r} has no extractor: llm-d stores no "
            "metrics from it; kvgate reads them with the built-in engine metric names"
        )
    return out
