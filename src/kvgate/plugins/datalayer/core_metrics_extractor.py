"""``core-metrics-extractor`` (llm-d): read queue, running, KV-usage, LoRA and cache-config
metrics from a metrics page, with metric names per inference engine.

* Parameters (llm-d's names and defaults): ``engineLabelKey`` = ``"llm-d.ai/engine-type"``
  (GIE's ``inference.networking.k8s.io/engine-type`` is read when it is absent),
  ``defaultEngine`` = ``"vllm"`` (for endpoints without the label), ``engineConfigs``: a list
  of ``{name, queuedRequestsSpec, runningRequestsSpec, kvUsageSpec, loraSpec, cacheInfoSpec}``
  added to (or replacing, by name) the built-in ``vllm``, ``sglang``, ``trtllm-serve``,
  ``triton-tensorrt-llm`` configurations.
* A spec is ``name`` or ``name{label=value,...}``; llm-d writes label values unquoted, kvgate
  accepts both.
* Not supported, rejected by name: ``customMetrics`` (kvgate has no endpoint attribute store
  for them), cache block size / block count read from their own gauges or from other label
  names (``cacheBlockSizeSpec``, ``cacheNumBlocksSpec``, ``cacheBlockSizeLabelName``,
  ``cacheNumBlocksLabelName``): kvgate reads ``block_size`` / ``num_gpu_blocks`` labels.
* Acts through kvgate's scraper: each endpoint is scraped with the metric names of its engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kvgate.endpoints.promtext import MetricNames, MetricSpec
from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind

TYPE = "core-metrics-extractor"

ENGINE_LABEL_KEY = "llm-d.ai/engine-type"
#: GIE's older label key, read when the llm-d one is absent (llm-d does the same).
LEGACY_ENGINE_LABEL_KEY = "inference.networking.k8s.io/engine-type"
DEFAULT_ENGINE = "vllm"

_ENGINE_FIELDS = (
    "name",
    "queuedRequestsSpec",
    "runningRequestsSpec",
    "kvUsageSpec",
    "loraSpec",
    "cacheInfoSpec",
)
_UNSUPPORTED_ENGINE_FIELDS = {
    "customMetrics": "kvgate has no endpoint attribute store for custom metrics",
    "cacheBlockSizeSpec": "kvgate reads the block size from the cache-info metric's labels",
    "cacheNumBlocksSpec": "kvgate reads the block count from the cache-info metric's labels",
    "cacheBlockSizeLabelName": "kvgate reads the label 'block_size'",
    "cacheNumBlocksLabelName": "kvgate reads the label 'num_gpu_blocks'",
}
_UNQUOTED = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([^",}]+)')


def _spec(text: str) -> MetricSpec:
    """Parse llm-d's ``name{k=v}`` (values unquoted) or Prometheus' ``name{k="v"}``."""
    brace = text.find("{")
    if brace >= 0 and '"' not in text:
        text = text[:brace] + _UNQUOTED.sub(r'\1="\2"', text[brace:])
    return MetricSpec.parse(text)


def _names(queued: str, running: str, kv: str, lora: str, cache: str) -> MetricNames:
    return MetricNames(
        queued=_spec(queued),
        running=_spec(running),
        kv_usage=_spec(kv),
        kv_usage_fallback=None,
        lora_info=_spec(lora) if lora else None,
        cache_info=_spec(cache) if cache else None,
    )


def builtin_engines() -> dict[str, MetricNames]:
    """llm-d's built-in engine metric names (vLLM keeps kvgate's pre-0.10 KV fallback)."""
    return {
        "vllm": MetricNames(),
        "sglang": _names(
            "sglang:num_queue_reqs",
            "sglang:num_running_reqs",
            "sglang:token_usage",
            "",
            "sglang:cache_config_info",
        ),
        "trtllm-serve": _names(
            "trtllm_num_requests_waiting",
            "trtllm_num_requests_running",
            "trtllm_kv_cache_utilization",
            "",
            "",
        ),
        "triton-tensorrt-llm": _names(
            "nv_trt_llm_request_metrics{request_type=waiting}",
            "nv_trt_llm_request_metrics{request_type=scheduled}",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
            "",
            "",
        ),
    }


class CoreMetricsExtractor:
    """Engine name -> metric names, and how an endpoint's engine is found."""

    type_name = TYPE
    input_kind: SourceKind = "metrics"

    def __init__(
        self,
        name: str,
        engines: Mapping[str, MetricNames],
        engine_label_key: str = ENGINE_LABEL_KEY,
        default_engine: str = DEFAULT_ENGINE,
    ) -> None:
        self.name = name
        self.engines = MappingProxyType(dict(engines))
        self.engine_label_key = engine_label_key
        self.default_engine = default_engine


def _engine(index: int, entry: Any, base: Mapping[str, MetricNames]) -> tuple[str, MetricNames]:
    where = f"engineConfigs[{index}]"
    if not isinstance(entry, dict):
        raise PluginParameterError(where, "expected a mapping with 'name' and metric specs")
    for key in entry:
        if key in _UNSUPPORTED_ENGINE_FIELDS:
            raise PluginParameterError(
                f"{where}.{key}", f"not supported: {_UNSUPPORTED_ENGINE_FIELDS[key]}"
            )
        if key not in _ENGINE_FIELDS:
            raise PluginParameterError(
                f"{where}.{key}", f"unknown field (known: {', '.join(_ENGINE_FIELDS)})"
            )
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise PluginParameterError(f"{where}.name", "required: the engine type name")
    specs: dict[str, str] = {}
    for key in _ENGINE_FIELDS[1:]:
        value = entry.get(key, "")
        if not isinstance(value, str):
            raise PluginParameterError(f"{where}.{key}", "expected a metric spec string")
        specs[key] = value
    for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        if not specs[key]:
            raise PluginParameterError(f"{where}.{key}", "required: a metric spec such as 'name'")
    try:
        names = _names(
            specs["queuedRequestsSpec"],
            specs["runningRequestsSpec"],
            specs["kvUsageSpec"],
            specs["loraSpec"],
            specs["cacheInfoSpec"],
        )
    except ValueError as exc:
        raise PluginParameterError(where, str(exc)) from exc
    return name, names


def create(name: str, params: Params, ctx: PluginContext) -> CoreMetricsExtractor:
    engines = builtin_engines()
    raw = params.get_any("engineConfigs")
    if raw is not None:
        if not isinstance(raw, list):
            raise PluginParameterError("engineConfigs", "expected a list of engine configs")
        for i, entry in enumerate(raw):
            engine, names = _engine(i, entry, engines)
            engines[engine] = names
    default_engine = params.get_str("defaultEngine", DEFAULT_ENGINE)
    if default_engine not in engines:
        raise PluginParameterError(
            "defaultEngine",
            f"unknown engine {default_engine!r} (known: {', '.join(sorted(engines))})",
        )
    label_key = params.get_str("engineLabelKey", ENGINE_LABEL_KEY) or ENGINE_LABEL_KEY
    return CoreMetricsExtractor(name, engines, label_key, default_engine)
