"""``no-hit-lru-scorer`` (llm-d): spread prefix-cache misses over the least recently used endpoints.

A request no endpoint has a cached prefix for ("cold") should go where it disturbs the least
cache: first to endpoints that never got a cold request, then to the least recently used.

* Parameters: ``prefixPluginName`` (default ``"prefix-cache-scorer"``): the prefix scorer whose
  cycle state tells whether the request is cold; ``prefixMatchInfoProducerName`` (llm-d-router):
  read coldness from that data producer's ``PrefixCacheMatchInfo`` instead (a config naming a
  producer that is not configured is rejected); ``prefixPluginType`` (accepted: never used,
  also in llm-d); ``lruSize`` (int, default 1024): how many endpoints the LRU remembers.
* Cold: the prefix scorer wrote no state this cycle, or no endpoint matched a block. With a
  producer — the named one, or ``approx-prefix-cache-producer`` whenever it ran for the
  request (llm-d-router's default) — cold means no candidate has ``match_blocks > 0``. When
  neither a producer nor the ``prefixPluginName`` plugin is configured, the scorer consumes
  ``approx-prefix-cache-producer``, which the config builder then adds, as llm-d-router.
* Formula: warm → 0.5 for every candidate. Cold with ``N`` candidates (``N = 1`` → 1): the
  i-th candidate that never got a cold request (i from 0, in candidate order) scores
  ``1 − i / (N − 1)``; a candidate at LRU position ``p`` (0 = least recently used, counted
  over every endpoint the LRU holds, candidate or not, as llm-d-router) scores
  ``max(0, 1 − (nNever + p) / (N − 1))``.
* PreRequest: on a cold request, the primary target becomes the most recently used.
* State: an LRU of endpoint names; removed endpoints are dropped (``endpoints_removed``).

**Deliberate difference from llm-d v0.4:** it read the prefix state under the key
``"prefix-cache-scorer"`` instead of ``"<name>/<type>"``, found nothing, and treated every
request as cold. kvgate reads ``"<prefixPluginName>/<its type>"`` as intended (fixed upstream
later).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext, state_key
from kvgate.plugins.scorers import prefix_cache_scorer
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheState
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, Request, SchedulingResult

TYPE = "no-hit-lru-scorer"

#: What llm-d-router's scorer reads when no producer is named (used when that producer ran).
_DEFAULT_KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_cache_scorer.DEFAULT_PRODUCER)


def prefix_state_key(ctx: PluginContext, prefix_plugin_name: str) -> str:
    """``"<name>/<type>"`` of the named prefix plugin (its type looked up once plugins exist)."""
    plugin = ctx.plugins.get(prefix_plugin_name)
    type_name = getattr(plugin, "type_name", prefix_cache_scorer.TYPE)
    return state_key(prefix_plugin_name, type_name)


class NoHitLRUScorer:
    """Routes cold requests to never-used, then least recently used endpoints."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        ctx: PluginContext,
        prefix_plugin_name: str,
        lru_size: int,
        producer_name: str = "",
    ) -> None:
        self.name = name
        self.producer_key = (
            DataKey(data.PREFIX_CACHE_MATCH_INFO, producer_name) if producer_name else None
        )
        self.prefix_plugin_name = prefix_plugin_name
        self.lru_size = lru_size
        self._ctx = ctx
        self._lru: dict[str, None] = {}  # least recently used first
        self._cold_key = f"kvgate.no-hit-lru.cold/{name}"

    def lru(self) -> list[str]:
        return list(self._lru)

    def consumes(self) -> tuple[DataKey, ...]:
        if self.producer_key is not None:
            return (self.producer_key,)
        if self.prefix_plugin_name not in self._ctx.plugins:
            # no prefix scorer to read: llm-d-router's scorer requires the default producer's
            # matches, and llm-d adds that producer (e.g. beside a precise-prefix-cache-scorer)
            return (_DEFAULT_KEY,)
        return ()

    def is_cold(self, state: CycleState, request: Request | None = None) -> bool:
        key = self.producer_key or _DEFAULT_KEY
        matches = (
            data.per_endpoint(request, key, PrefixCacheMatchInfo) if request is not None else None
        )
        if self.producer_key is not None or matches is not None:
            return not matches or all(m.match_blocks <= 0 for m in matches.values())
        found = state.read(prefix_state_key(self._ctx, self.prefix_plugin_name), PrefixCacheState)
        return found is None or not found.matches

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        cold = self.is_cold(state, request)
        request.extra[self._cold_key] = cold
        if not cold:
            return {e.name: 0.5 for e in endpoints}
        n = len(endpoints)
        if n == 1:
            return {endpoints[0].name: 1.0}
        span = n - 1
        never = [e.name for e in endpoints if e.name not in self._lru]
        out = {name: 1.0 - i / span for i, name in enumerate(never)}
        candidates = {e.name for e in endpoints}
        # the position is over the whole LRU, candidates or not, as llm-d-router's
        for position, name in enumerate(self._lru):  # oldest first
            if name in candidates:
                out[name] = max(0.0, 1.0 - (len(never) + position) / span)
        return out

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        if not request.extra.get(self._cold_key):
            return
        primary = result.profile_results.get(result.primary_profile_name)
        if primary is None or not primary.targets:
            return
        name = primary.targets[0].name
        self._lru.pop(name, None)
        self._lru[name] = None
        while len(self._lru) > self.lru_size:
            del self._lru[next(iter(self._lru))]

    def endpoints_removed(self, names: Sequence[str]) -> None:
        for name in names:
            self._lru.pop(name, None)


def create(name: str, params: Params, ctx: PluginContext) -> NoHitLRUScorer:
    params.get_str("prefixPluginType", "")  # deprecated in llm-d: "never used"
    return NoHitLRUScorer(
        name,
        ctx,
        params.get_str("prefixPluginName", prefix_cache_scorer.TYPE),
        params.get_int("lruSize", 1024, minimum=1),
        params.get_str("prefixMatchInfoProducerName", ""),
    )
