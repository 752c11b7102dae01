"""``mm-embeddings-cache-producer`` (llm-d): which endpoint likely holds which image's encoding.

Learns from kvgate's own routing, as ``approx-prefix-cache-producer`` does for prompt blocks:
one bounded LRU of multimodal item hashes per endpoint, filled in PreRequest with the items of
each request sent there; before scheduling it publishes, per candidate, which of the request's
items that endpoint's encoder cache likely still holds. ``mm-embeddings-cache-scorer``
consumes it.

* Parameters (llm-d's names and defaults): ``cacheSizeInMBPerServer`` (int, 4096) — the model
  server's encoder-cache budget in MiB; each endpoint's LRU remembers ``MiB / 2`` items (llm-d
  assumes 2 MiB an item); 0 or less means the default. ``cacheSizeInMB`` is read as the same
  parameter when ``cacheSizeInMBPerServer`` is absent: it is the name llm-d's own sample
  (deploy/config/epp-mm-embeddings-cache-config.yaml) sets, which llm-d's decoder drops
  silently (so llm-d runs that sample with 4096); kvgate honours the value written.
* Input: :attr:`Request.mm_items` (kvgate.openai.multimodal, parsed at the edge): each
  distinct item hash counts once. llm-d reads the same items from a token producer's
  multimodal features; kvgate hashes them as llm-d's tokenizer-free estimate backend does, so
  no tokenizer is needed and none is declared.
* Output per candidate, only for requests with items: ``EncoderCacheMatchInfo`` under
  ``MultiModalEncoderCacheMatchInfoKey/<name>`` — the hashes held there and the request's
  distinct item count. Looking up does not refresh recency; recording does.
* PreRequest: the request's items are recorded for every target of the primary profile
  (llm-d's choice: the server that consumed the embeddings). Endpoints that leave the pool are
  forgotten at once (llm-d also sweeps every 2 minutes for missed deletions; kvgate's pool
  reports every removal to every endpoint listener, so there is nothing to sweep).
* Not done: llm-d's ``encoder_cache_*`` metrics on the EPP's /metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, EncoderCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, Request, SchedulingResult

TYPE = "mm-embeddings-cache-producer"
DEFAULT_PRODUCER_FOR = (data.ENCODER_CACHE_MATCH_INFO,)

#: llm-d's default per-endpoint budget (4 GiB) and its assumed size of one encoded item.
DEFAULT_CACHE_SIZE_MB = 4096
ITEM_MB = 2


def lru_capacity(cache_size_mb: int) -> int:
    """Items remembered per endpoint for a MiB budget (the default for 0 or less)."""
    mb = cache_size_mb if cache_size_mb > 0 else DEFAULT_CACHE_SIZE_MB
    return max(1, mb // ITEM_MB)


class EncoderCacheIndex:
    """Per-endpoint LRUs of item hashes; each dict is in recency order, oldest first."""

    __slots__ = ("_held", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: dict[str, dict[str, None]] = {}

    def matched(self, endpoint: str, hashes: Sequence[str]) -> tuple[str, ...]:
        """The hashes ``endpoint`` holds (recency unchanged)."""
        held = self._held.get(endpoint)
        if not held:
            return ()
        return tuple(h for h in hashes if h in held)

    def add(self, endpoint: str, hashes: Sequence[str]) -> None:
        """Record ``hashes`` as most recent at ``endpoint``, evicting the oldest past capacity."""
        held = self._held.setdefault(endpoint, {})
        for h in hashes:
            held.pop(h, None)
            held[h] = None
        excess = len(held) - self.capacity
        if excess > 0:
            for h in list(held)[:excess]:
                del held[h]

    def remove(self, endpoints: Sequence[str]) -> None:
        for name in endpoints:
            self._held.pop(name, None)

    def size(self, endpoint: str) -> int:
        return len(self._held.get(endpoint, ()))


def distinct_hashes(request: Request) -> tuple[str, ...]:
    """The request's item hashes, each once, in first-seen order."""
    return tuple(dict.fromkeys(item.mm_hash for item in request.mm_items))


class MMEmbeddingsCacheProducer:
    """Producer + PreRequest + EndpointListener over an :class:`EncoderCacheIndex`."""

    type_name = TYPE

    def __init__(self, name: str, cache_size_mb: int = DEFAULT_CACHE_SIZE_MB) -> None:
        self.name = name
        self.index = EncoderCacheIndex(lru_capacity(cache_size_mb))
        self.key = DataKey(data.ENCODER_CACHE_MATCH_INFO, name)

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        if not request.mm_items:
            return
        hashes = distinct_hashes(request)
        n = len(hashes)
        matched = self.index.matched
        data.put(
            request,
            self.key,
            {e.name: EncoderCacheMatchInfo(matched(e.name, hashes), n) for e in endpoints},
        )

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        if not request.mm_items:
            return
        primary = result.profile_results.get(result.primary_profile_name)
        if primary is None:
            return
        hashes = distinct_hashes(request)
        for target in primary.targets:
            self.index.add(target.name, hashes)

    def endpoints_removed(self, names: Sequence[str]) -> None:
        self.index.remove(names)


def create(name: str, params: Params, ctx: PluginContext) -> MMEmbeddingsCacheProducer:
    size = params.get_int("cacheSizeInMBPerServer", 0)
    legacy = params.get_int("cacheSizeInMB", 0)  # llm-d's sample's name; see the docstring
    if not params.has("cacheSizeInMBPerServer"):
        size = legacy
    return MMEmbeddingsCacheProducer(name, size)
