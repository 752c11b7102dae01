"""``kv-cache-utilization-scorer`` (alias ``kv-cache-scorer``): prefer emptier KV caches.

* Parameters: none.
* Formula: ``1 − kv_cache_usage`` (usage is a fraction in [0, 1]).
* Inputs: ``Metrics.kv_cache_usage_percent`` (``vllm:kv_cache_usage_perc``). State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "kv-cache-utilization-scorer"
ALIASES = ("kv-cache-scorer",)


class KVCacheUtilizationScorer:
    """``1 − KV-cache usage``."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return {e.name: 1.0 - e.metrics.kv_cache_usage_percent for e in endpoints}


def create(name: str, params: Params, ctx: PluginContext) -> KVCacheUtilizationScorer:
    return KVCacheUtilizationScorer(name)
