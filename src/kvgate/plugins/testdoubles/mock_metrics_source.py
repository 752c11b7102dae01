"""``mock-metrics-source`` (llm-d's integration-test double): endpoint metrics from a table.

llm-d's EPP integration harness registers this type with an object its tests fill in (the
metrics of each pod); on every poll it writes those metrics into the endpoint, stamped now,
and scrapes nothing. kvgate takes the same table from the parameters, so a config naming it
runs unchanged and its scorers see the metrics the table gives.

* Parameters: ``metrics`` (optional): endpoint (its pool name, or ``host:port``) -> a mapping
  of llm-d's Metrics fields: ``waitingQueueSize``, ``runningRequestsSize`` (integers >= 0),
  ``kvCacheUsagePercent`` (a fraction in [0, 1]), ``activeModels`` / ``waitingModels``
  (lists of model or LoRA adapter names), ``maxActiveModels``, ``cacheBlockSize``,
  ``cacheNumBlocks`` (integers >= 0). Fields left out are 0 or empty. Without ``metrics``
  no endpoint gets metrics, as in llm-d's harness before a test sets any.
* Acts through kvgate's scraper (:class:`kvgate.endpoints.scrape.Scraper`'s
  ``static_metrics``): every refresh tick writes each listed endpoint's metrics, stamped
  now; ``/metrics`` is not read and an endpoint's rotation follows its ``/health`` probe.
  Being the data layer's metrics source, it keeps the default ``metrics-data-source`` from
  being added beside it (both would write the same endpoint metrics).
* Not wired to extractors: llm-d's double ignores them, so kvgate refuses any it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind
from kvgate.plugins.testdoubles import STRICT_NOTES
from kvgate.scheduling.types import Metrics

TYPE = "mock-metrics-source"

_INT_FIELDS = {
    "waitingQueueSize": "waiting_queue_size",
    "runningRequestsSize": "running_requests_size",
    "maxActiveModels": "max_active_models",
    "cacheBlockSize": "cache_block_size",
    "cacheNumBlocks": "cache_num_gpu_blocks",
}
_LIST_FIELDS = {"activeModels": "active_models", "waitingModels": "waiting_models"}
_FIELDS = (*_INT_FIELDS, "kvCacheUsagePercent", *_LIST_FIELDS)


class MockMetricsSource:
    """Endpoint name or ``host:port`` -> the metrics to serve for it."""

    type_name = TYPE
    strict_notes = STRICT_NOTES
    source_kind: SourceKind = "metrics"

    def __init__(self, name: str, metrics: Mapping[str, Metrics]) -> None:
        self.name = name
        self.metrics = MappingProxyType(dict(metrics))


def _metrics(where: str, entry: Any) -> Metrics:
    if not isinstance(entry, dict):
        raise PluginParameterError(
            where, f"expected a mapping of metric fields ({', '.join(_FIELDS)})"
        )
    values: dict[str, Any] = {}
    for key, value in entry.items():
        path = f"{where}.{key}"
        if key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PluginParameterError(path, f"expected an integer >= 0, got {value!r}")
            values[_INT_FIELDS[key]] = value
        elif key == "kvCacheUsagePercent":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise PluginParameterError(path, f"expected a fraction in [0, 1], got {value!r}")
            values["kv_cache_usage_percent"] = float(value)
        elif key in _LIST_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PluginParameterError(path, "expected a list of model names")
            values[_LIST_FIELDS[key]] = frozenset(value)
        else:
            raise PluginParameterError(path, f"unknown metric field (known: {', '.join(_FIELDS)})")
    return Metrics(**values)


def create(name: str, params: Params, ctx: PluginContext) -> MockMetricsSource:
    raw = params.get_any("metrics")
    table: dict[str, Metrics] = {}
    if raw is not None:
        if not isinstance(raw, dict):
            raise PluginParameterError("metrics", "expected a mapping: endpoint -> metric fields")
        for endpoint, entry in raw.items():
            table[str(endpoint)] = _metrics(f"metrics[{endpoint}]", entry)
    return MockMetricsSource(name, table)
