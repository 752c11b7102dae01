"""``prefix-cache-scorer`` (approximate): prefer endpoints that recently served the same prefix.

The index never reads the model servers: it remembers which prompt blocks kvgate itself sent
to each endpoint, as GIE's approximate prefix plugin does.

* Two modes. **Consumer** (llm-d-router's stateless scorer): with
  ``prefixMatchInfoProducerName`` set — or, when it is not, whenever a producer named
  ``approx-prefix-cache-producer`` published matches for the request — the scorer keeps no
  index and scores the producer's :class:`~kvgate.scheduling.data.PrefixCacheMatchInfo`.
  **Standalone** (GIE's approximate plugin, everything below): otherwise it keeps its own
  index, so configs of that generation work unchanged.
* Score (both modes): ``w · min(1, matched_tokens / matchLengthScaleTokens)² + (1 − w) ·
  matched_blocks / total_blocks`` with ``w = matchLengthWeight`` (default 0: the ratio only).
* Parameters: ``prefixMatchInfoProducerName`` (string; the producer to consume);
  ``matchLengthWeight`` (float in [0, 1], default 0) and ``matchLengthScaleTokens`` (int > 0,
  default 8192); standalone only (an error together with ``prefixMatchInfoProducerName``):
  ``autoTune`` (bool, default true) — size blocks and LRUs from ``vllm:cache_config_info``;
  ``blockSize`` (int, default 64; ``hashBlockSize`` is accepted as its older name) — block
  length in **bytes of the input**, used when autoTune is off or the size is unknown;
  ``blockSizeTokens`` (int) — the same in tokens (``4 ·`` bytes; wins over ``blockSize``);
  ``maxPrefixBlocksToMatch`` (int, default 256) — at most this many leading blocks are hashed;
  ``lruCapacityPerServer`` (int, default 31250) — blocks remembered per endpoint when autoTune
  is off or ``num_gpu_blocks`` is unknown.
* Input: the completion ``prompt``, or the chat ``messages`` as compact JSON (no spaces,
  ``<``, ``>``, ``&`` escaped as ``\\u003c`` … like Go's ``json.Marshal``; keys in the
  client's order), as UTF-8 bytes.
* Blocks: ``4 · block_size`` bytes (≈ one vLLM block of tokens) when autoTune and the first
  candidate reports ``cache_block_size > 0``, else ``blockSize``; only full blocks, at most
  ``maxPrefixBlocksToMatch``. Hashes: the xxhash64 chain of
  :func:`kvgate.kvcache.hashing.prefix_block_hashes` seeded by
  :func:`~kvgate.kvcache.hashing.prefix_hash_seed` (model, cache_salt); memoised on
  ``Request.extra`` and computed lazily: scoring hashes only as far as some endpoint still
  matches (a prompt nobody has seen costs one hash), PreRequest completes the chain.
* Formula: ``score = m_e / n`` where ``n`` is the number of hashed blocks and ``m_e`` the
  length of the longest run of leading blocks endpoint ``e`` holds (0 when ``n = 0``).
  **Deliberate difference from llm-d:** GIE walks the blocks and credits every server holding
  block ``i`` until *no* server holds it, so a server that missed block 2 is still credited for
  block 3 if another server kept the walk going. A server cannot reuse KV blocks after a gap,
  so kvgate scores the per-endpoint consecutive prefix, which is what the walk was meant to
  measure.
* State: one LRU of block hashes per endpoint (capacity ``num_gpu_blocks`` of that endpoint
  when autoTune and known, else ``lruCapacityPerServer``). Updated in **PreRequest** with
  every hash of the request for the primary target and for the target of a profile literally
  named ``prefill``, inserted tail first so that eviction drops a chain's last blocks
  before its first, as vLLM evicts (**another difference from llm-d**, whose LRU drops a
  chain's first block first and so keeps a tail nobody can reuse). Endpoints are dropped
  when they leave the pool (``endpoints_removed``) and when they have not been a candidate
  for 2 minutes.
* Cycle state: :class:`PrefixCacheState` ``{chain (hashes), matches, input_len}`` under
  ``"<name>/prefix-cache-scorer"``, read by ``no-hit-lru-scorer`` and ``pd-profile-handler``.

Memory: each endpoint's LRU is an insertion-ordered ``dict`` of hash → None (hits move to the
end; eviction drops from the front, batched once per request). There is no global
hash → endpoints map, which halves the memory; scoring probes each candidate's dict instead.
Because tail-first insertion keeps every endpoint's held blocks prefix-closed, that probe
gallops and binary-searches (about 2·log2(m) lookups for a match of m blocks, not m).
About 90 B per entry; see docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import msgspec

from kvgate.errors import PluginParameterError
from kvgate.kvcache.hashing import prefix_block_hashes, prefix_hash_seed
from kvgate.kvcache.metrics import track_approx_index
from kvgate.plugins.base import Params, PluginContext, state_key
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    Clock,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
)

TYPE = "prefix-cache-scorer"

#: The producer a scorer without ``prefixMatchInfoProducerName`` reads when it ran.
DEFAULT_PRODUCER = "approx-prefix-cache-producer"
#: Standalone-only parameters, rejected together with ``prefixMatchInfoProducerName``.
INDEX_PARAMETERS = (
    "autoTune",
    "blockSize",
    "hashBlockSize",
    "blockSizeTokens",
    "maxPrefixBlocksToMatch",
    "lruCapacityPerServer",
)

#: Endpoints not seen among the candidates for this long are dropped from the index.
STALE_ENDPOINT_S = 120.0

_INPUT_KEY = "kvgate.prefix.input"
_HTML_ESCAPES = ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"))


class PrefixChain:
    """A request's block-hash chain, computed lazily: scoring hashes only as far as some
    endpoint still matches (one hash for a request nobody has seen); PreRequest completes it.

    ``num_blocks`` is known up front (full blocks, capped), so scores need no hashing beyond
    the longest match.
    """

    __slots__ = ("_hashes", "_text", "block_bytes", "num_blocks", "seed")

    def __init__(self, text: bytes, block_bytes: int, seed: int, max_blocks: int) -> None:
        self._text = text
        self.block_bytes = block_bytes
        self.seed = seed
        self.num_blocks = min(len(text) // block_bytes, max_blocks)
        self._hashes: list[int] = []

    def upto(self, k: int) -> list[int]:
        """The first ``min(k, num_blocks)`` hashes (the list is shared; do not mutate)."""
        hashes = self._hashes
        done = len(hashes)
        k = min(k, self.num_blocks)
        if k > done:
            # h_i depends only on block_i and h_{i-1}: resume the chain from the last hash.
            bb = self.block_bytes
            prev = hashes[-1] if hashes else self.seed
            hashes += prefix_block_hashes(self._text[done * bb : k * bb], bb, prev, k - done)
        return hashes

    @property
    def num_hashed(self) -> int:
        """How many hashes have been computed so far."""
        return len(self._hashes)

    def all(self) -> tuple[int, ...]:
        return tuple(self.upto(self.num_blocks))


@dataclass(frozen=True, slots=True)
class PrefixCacheState:
    """What one prefix scorer learned about the request in this cycle."""

    chain: PrefixChain  # the request's block hashes (lazy)
    matches: Mapping[str, int]  # endpoint name -> leading blocks it holds (only entries > 0)
    input_len: int  # bytes of the hashed input (prompt or chat JSON)

    @property
    def hashes(self) -> tuple[int, ...]:
        """Every block hash of the request, in prompt order."""
        return self.chain.all()

    @property
    def num_blocks(self) -> int:
        return self.chain.num_blocks

    @property
    def block_bytes(self) -> int:
        return self.chain.block_bytes


def prefix_input(request: Request) -> bytes:
    """The bytes the approximate prefix index hashes (memoised on the request)."""
    cached = request.extra.get(_INPUT_KEY)
    if isinstance(cached, bytes):
        return cached
    if request.messages is not None:
        try:
            data = msgspec.json.encode(request.messages)
        except (TypeError, msgspec.EncodeError):  # a Mapping type msgspec does not know
            data = json.dumps(
                [dict(m) for m in request.messages],
                separators=(",", ":"),
                ensure_ascii=False,
                default=str,
            ).encode()
        for raw, escaped in _HTML_ESCAPES:
            if raw in data:
                data = data.replace(raw, escaped)
    else:
        data = (request.prompt or "").encode()
    request.extra[_INPUT_KEY] = data
    return data


class ApproxPrefixIndex:
    """Per-endpoint LRUs of prefix block hashes."""

    __slots__ = ("__weakref__", "_blocks", "_last_seen", "default_capacity")

    def __init__(self, default_capacity: int) -> None:
        self.default_capacity = default_capacity
        self._blocks: dict[str, dict[int, None]] = {}
        self._last_seen: dict[str, float] = {}
        track_approx_index(self)  # kvgate_prefix_index_blocks, read at scrape time

    @property
    def total_blocks(self) -> int:
        """Block hashes held, summed over endpoints."""
        return sum(len(held) for held in self._blocks.values())

    def match_lengths(self, chain: PrefixChain, names: Sequence[str]) -> dict[str, int]:
        """Leading blocks of the chain each endpoint holds (endpoints holding none omitted).

        Relies on every endpoint's held set being prefix-closed (see :meth:`add`): holding
        block ``i`` of a chain implies holding blocks ``0 … i-1``, so "holds block ``i``" is
        true up to the match length and false after it. That lets the walk gallop (probe
        blocks 1, 3, 7, 15, …, every endpoint in lockstep) and then binary-search between its
        last hit and first miss: about ``2·log2(m)`` dict lookups per endpoint instead of
        ``m``, the same lengths as a block-by-block walk. Hashing stays lazy: the chain is
        hashed only up to the furthest probe, at most ``2m + 2`` blocks for the longest match
        ``m`` (one hash when nobody holds block 0).
        """
        out: dict[str, int] = {}
        n = chain.num_blocks
        if n == 0 or not self._blocks:
            return out
        first = chain.upto(1)[0]
        get = self._blocks.get
        galloping: list[tuple[str, dict[int, None]]] = []
        for name in names:
            blocks = get(name)
            if blocks is not None and first in blocks:
                galloping.append((name, blocks))
        held = 0  # every galloping endpoint holds blocks 0 … held
        while galloping:
            if held == n - 1:
                for name, _ in galloping:
                    out[name] = n
                break
            probe = min(2 * held + 1, n - 1)
            hashes = chain.upto(probe + 1)
            h = hashes[probe]
            still: list[tuple[str, dict[int, None]]] = []
            for name, blocks in galloping:
                if h in blocks:
                    still.append((name, blocks))
                    continue
                lo, hi = held, probe  # holds block lo, misses block hi
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if hashes[mid] in blocks:
                        lo = mid
                    else:
                        hi = mid
                out[name] = lo + 1
            galloping = still
            held = probe
        return out

    def add(self, name: str, hashes: Sequence[int], capacity: int | None = None) -> None:
        """Record that ``name`` now caches ``hashes``, evicting the least recently used.

        ``hashes`` is one request's chain in prompt order (``hashes[i]`` commits to
        ``hashes[i-1]``). It is inserted tail first, so block 0 becomes the most recent: every
        add refreshes a whole prefix of a chain, hence along any chain recency never increases
        and LRU eviction drops a chain's tail before its head, as vLLM's free queue does
        (``KVCacheManager.free`` frees a request's blocks in reverse order "so that the tail
        blocks are evicted first"). Each endpoint's held set therefore stays prefix-closed,
        which :meth:`match_lengths` relies on. GIE inserts head first and so evicts a chain's
        first block first, leaving a tail no request can reach.
        """
        blocks = self._blocks.get(name)
        if blocks is None:
            blocks = self._blocks[name] = {}
        for h in reversed(hashes):
            blocks.pop(h, None)  # a hit moves to the most-recent end
            blocks[h] = None
        overflow = len(blocks) - (capacity or self.default_capacity)
        if overflow > 0:
            for h in list(islice(blocks, overflow)):
                del blocks[h]

    def seen(self, names: Sequence[str], now: float) -> None:
        self._last_seen.update(dict.fromkeys(names, now))

    def purge_unseen(self, now: float, max_age_s: float) -> list[str]:
        """Drop endpoints last seen more than ``max_age_s`` ago; returns their names."""
        stale = [n for n, t in self._last_seen.items() if now - t > max_age_s]
        self.remove(stale)
        return stale

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            self._blocks.pop(name, None)
            self._last_seen.pop(name, None)

    def endpoints(self) -> list[str]:
        return list(self._blocks)

    def num_blocks(self, name: str) -> int:
        return len(self._blocks.get(name, ()))

    def __len__(self) -> int:
        """Total (endpoint, block) entries."""
        return sum(len(b) for b in self._blocks.values())


class PrefixCacheScorer:
    """Approximate prefix-cache affinity (Scorer + PreRequest + EndpointListener)."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        auto_tune: bool = True,
        block_size: int = 64,
        max_prefix_blocks: int = 256,
        lru_capacity_per_server: int = 31250,
        producer_name: str = "",
        match_length_weight: float = 0.0,
        match_length_scale_tokens: int = 8192,
    ) -> None:
        self.name = name
        self.producer_name = producer_name
        self.match_length_weight = match_length_weight
        self.match_length_scale_tokens = match_length_scale_tokens
        self.producer_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, producer_name or DEFAULT_PRODUCER)
        self._consumed = f"kvgate.prefix.consumed/{name}"
        self.auto_tune = auto_tune
        self.block_size = block_size
        self.max_prefix_blocks = max_prefix_blocks
        self.index = ApproxPrefixIndex(lru_capacity_per_server)
        self.state_key = state_key(name, TYPE)
        self._clock = clock
        self._next_purge = clock() + STALE_ENDPOINT_S

    def block_bytes(self, endpoint: Endpoint | None) -> int:
        if self.auto_tune and endpoint is not None and endpoint.metrics.cache_block_size > 0:
            return 4 * endpoint.metrics.cache_block_size
        return self.block_size

    def chain(self, request: Request, block_bytes: int) -> PrefixChain:
        """The request's hash chain for ``block_bytes`` (memoised on the request)."""
        key = f"kvgate.prefix.chain/{block_bytes}/{self.max_prefix_blocks}"
        cached = request.extra.get(key)
        if isinstance(cached, PrefixChain):
            return cached
        seed = prefix_hash_seed(request.effective_model, request.cache_salt)
        chain = PrefixChain(prefix_input(request), block_bytes, seed, self.max_prefix_blocks)
        request.extra[key] = chain
        return chain

    def hashes(self, request: Request, block_bytes: int) -> tuple[int, ...]:
        """Every block hash of the request for ``block_bytes``."""
        return self.chain(request, block_bytes).all()

    def consumes(self) -> tuple[DataKey, ...]:
        """The named producer's matches (none in standalone mode: it is optional there)."""
        return (self.producer_key,) if self.producer_name else ()

    def combine(self, matched_blocks: float, total_blocks: int, block_tokens: float) -> float:
        """llm-d's score from a match: ratio, blended with the squared match length."""
        if total_blocks <= 0:
            return 0.0
        ratio = matched_blocks / total_blocks
        w = self.match_length_weight
        if w <= 0.0:
            return ratio
        length = min(1.0, matched_blocks * block_tokens / self.match_length_scale_tokens)
        return w * length * length + (1.0 - w) * ratio

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        produced = data.per_endpoint(request, self.producer_key, PrefixCacheMatchInfo)
        if produced is not None or self.producer_name:
            request.extra[self._consumed] = True
            out = dict.fromkeys((e.name for e in endpoints), 0.0)
            for e in endpoints:
                info = (produced or {}).get(e.name)
                if info is not None:
                    out[e.name] = self.combine(
                        info.match_blocks, info.total_blocks, info.block_size_tokens
                    )
            return out
        names = [e.name for e in endpoints]
        now = self._clock()
        if now >= self._next_purge:  # before marking: a returning endpoint starts cold
            self.index.purge_unseen(now, STALE_ENDPOINT_S)
            self._next_purge = now + STALE_ENDPOINT_S
        self.index.seen(names, now)
        chain = self.chain(request, self.block_bytes(endpoints[0] if endpoints else None))
        matches = self.index.match_lengths(chain, names)
        found = PrefixCacheState(chain, matches, len(prefix_input(request)))
        state.write(self.state_key, found)
        request.extra[self.state_key] = found  # PreRequest has no cycle state
        scores = dict.fromkeys(names, 0.0)
        n = chain.num_blocks
        block_tokens = chain.block_bytes / 4  # GIE's 4 characters a token
        for name, matched in matches.items():
            scores[name] = self.combine(matched, n, block_tokens)
        return scores

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        if request.extra.get(self._consumed):  # the producer keeps the index
            return
        targets: list[Endpoint] = []
        primary = result.profile_results.get(result.primary_profile_name)
        if primary is not None and primary.targets:
            targets.append(primary.targets[0])
        prefill = result.profile_results.get("prefill")
        if prefill is not None and prefill.targets and result.primary_profile_name != "prefill":
            targets.append(prefill.targets[0])
        found = request.extra.get(self.state_key)
        for target in targets:
            if isinstance(found, PrefixCacheState):
                chain = found.chain
            else:  # the scorer did not run for this request (not in any executed profile)
                chain = self.chain(request, self.block_bytes(target))
            hashes = chain.upto(chain.num_blocks)
            if hashes:
                self.index.add(target.name, hashes, self._capacity(target))

    def _capacity(self, endpoint: Endpoint) -> int | None:
        blocks = endpoint.metrics.cache_num_gpu_blocks
        return blocks if self.auto_tune and blocks > 0 else None

    def endpoints_removed(self, names: Sequence[str]) -> None:
        self.index.remove(names)


def create(name: str, params: Params, ctx: PluginContext) -> PrefixCacheScorer:
    # llm-d-inference-scheduler v0.1's ``mode``: estimate (this scorer) or cache_tracking
    mode = params.get_str("mode", "estimate")
    if mode != "estimate":
        raise PluginParameterError(
            "mode",
            f"{mode!r} is not supported: cache_tracking read llm-d-inference-scheduler v0.1's "
            "Redis KV-block index; use precise-prefix-cache-scorer (the engines' KV events)",
        )
    producer_name = params.get_str("prefixMatchInfoProducerName", "")
    if producer_name:
        for key in INDEX_PARAMETERS:
            if params.has(key):
                raise PluginParameterError(
                    key,
                    "applies only to the scorer's own index; with prefixMatchInfoProducerName "
                    f"{producer_name!r} set it on that producer",
                )
    weight = params.get_float("matchLengthWeight", 0.0, minimum=0.0, maximum=1.0)
    scale = params.get_int("matchLengthScaleTokens", 8192)
    if weight > 0.0 and scale <= 0:
        raise PluginParameterError(
            "matchLengthScaleTokens",
            f"expected an integer > 0 when matchLengthWeight > 0, got {scale}",
        )
    # ``hashBlockSize`` is the name GIE used up to v1.0; ``blockSize`` wins when both are set;
    # ``blockSizeTokens`` (tokens, 4 bytes each) wins over both.
    legacy_block_size = params.get_int("hashBlockSize", 64, minimum=1)
    block_size = params.get_int("blockSize", legacy_block_size, minimum=1)
    if params.has("blockSizeTokens"):
        block_size = 4 * params.get_int("blockSizeTokens", 16, minimum=1)
    return PrefixCacheScorer(
        name,
        ctx.clock,
        auto_tune=params.get_bool("autoTune", True),
        block_size=block_size,
        max_prefix_blocks=params.get_int("maxPrefixBlocksToMatch", 256, minimum=1),
        lru_capacity_per_server=params.get_int("lruCapacityPerServer", 31250, minimum=1),
        producer_name=producer_name,
        match_length_weight=weight,
        match_length_scale_tokens=scale,
    )
