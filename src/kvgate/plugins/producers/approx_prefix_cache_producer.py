"""``approx-prefix-cache-producer``: each endpoint's prefix match from kvgate's own routing history.

Runs in the data-preparation step (before any profile) and publishes one
:class:`~kvgate.scheduling.data.PrefixCacheMatchInfo` per candidate under
``PrefixCacheMatchInfoDataKey/<name>``, consumed by ``prefix-cache-scorer``,
``prefix-cache-affinity-filter``, ``no-hit-lru-scorer`` and ``inflight-load-producer``. The
index is the approximate one of ``prefix-cache-scorer`` (:class:`ApproxPrefixIndex`): one LRU
of block hashes per endpoint, learnt in PreRequest from where kvgate sent each request.

* Parameters (llm-d's names and defaults): ``autoTune`` (bool, true) — block size from the
  first candidate's ``vllm:cache_config_info`` block_size and LRU capacity from its
  num_gpu_blocks; ``blockSizeTokens`` (int, 16; ``blockSize`` is its deprecated name, used
  when ``blockSizeTokens`` is left at its default) — tokens per block when not auto-tuned;
  every block size is raised to at least 64 tokens, as llm-d does (its issue #1158);
  ``maxPrefixBlocksToMatch`` (int, 2048) and ``maxPrefixTokensToMatch`` (int, 131072):
  blocks hashed at most — ``maxPrefixTokensToMatch // blockSize`` when that is > 0, else
  ``maxPrefixBlocksToMatch``, and no cap when both are 0; ``lruCapacityPerServer`` (int,
  31250) — blocks remembered per endpoint when not auto-tuned.
* Input: the prompt (completions) or the chat messages as compact JSON, as UTF-8 bytes, in
  blocks of ``4 · blockSizeTokens`` bytes — llm-d's tokenizer-free ``estimate`` packing (4
  bytes a token), hashed directly, so no ``token-producer`` is needed. Full blocks only.
* Output per candidate: ``match_blocks = cached_block_count =`` the leading blocks the
  endpoint holds (consecutive from block 0: **the same deliberate difference from llm-d** as
  ``prefix-cache-scorer``, whose walk also credits blocks after a gap),
  ``total_blocks`` = blocks hashed, ``block_size_tokens``.
* PreRequest: the request's hashes are added to the primary target and to the target of a
  profile named ``prefill``. Endpoints that leave the pool, or are not a candidate for 2
  minutes, are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.kvcache.hashing import prefix_hash_seed
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers.prefix_cache_scorer import (
    STALE_ENDPOINT_S,
    ApproxPrefixIndex,
    PrefixChain,
    prefix_input,
)
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import Clock, CycleState, Endpoint, Request, SchedulingResult

TYPE = "approx-prefix-cache-producer"
DEFAULT_PRODUCER_FOR = (data.PREFIX_CACHE_MATCH_INFO,)

#: llm-d raises smaller block sizes to this many tokens (llm-d-router issue #1158).
MIN_BLOCK_SIZE_TOKENS = 64
#: Bytes per token of llm-d's tokenizer-free estimate.
BYTES_PER_TOKEN = 4
#: ``maxPrefix*ToMatch`` both 0: match the whole prompt.
UNLIMITED_BLOCKS = 1 << 40


class ApproxPrefixCacheProducer:
    """Producer + PreRequest + EndpointListener over an :class:`ApproxPrefixIndex`."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        auto_tune: bool = True,
        block_size_tokens: int = 16,
        max_prefix_blocks: int = 2048,
        max_prefix_tokens: int = 131072,
        lru_capacity_per_server: int = 31250,
    ) -> None:
        self.name = name
        self.auto_tune = auto_tune
        self.block_size_tokens = block_size_tokens
        self.max_prefix_blocks = max_prefix_blocks
        self.max_prefix_tokens = max_prefix_tokens
        self.index = ApproxPrefixIndex(lru_capacity_per_server)
        self.key = DataKey(data.PREFIX_CACHE_MATCH_INFO, name)
        self._chain_key = f"kvgate.approx-prefix-chain/{name}"
        self._clock = clock
        self._next_purge = clock() + STALE_ENDPOINT_S

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def block_tokens(self, endpoints: Sequence[Endpoint]) -> int:
        """Tokens per block for this cycle (auto-tuned from the first candidate)."""
        size = self.block_size_tokens
        if self.auto_tune and endpoints and endpoints[0].metrics.cache_block_size > 0:
            size = endpoints[0].metrics.cache_block_size
        return max(size, MIN_BLOCK_SIZE_TOKENS)

    def max_blocks(self, block_tokens: int) -> int:
        if self.max_prefix_tokens > 0:
            return max(self.max_prefix_tokens // block_tokens, 0)
        return self.max_prefix_blocks or UNLIMITED_BLOCKS

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        names = [e.name for e in endpoints]
        now = self._clock()
        if now >= self._next_purge:  # before marking: a returning endpoint starts cold
            self.index.purge_unseen(now, STALE_ENDPOINT_S)
            self._next_purge = now + STALE_ENDPOINT_S
        self.index.seen(names, now)
        block_tokens = self.block_tokens(endpoints)
        seed = prefix_hash_seed(request.effective_model, request.cache_salt)
        chain = PrefixChain(
            prefix_input(request),
            block_tokens * BYTES_PER_TOKEN,
            seed,
            self.max_blocks(block_tokens),
        )
        request.extra[self._chain_key] = chain
        matches = self.index.match_lengths(chain, names)
        total = chain.num_blocks
        data.put(
            request,
            self.key,
            {
                name: PrefixCacheMatchInfo(
                    matches.get(name, 0), total, block_tokens, matches.get(name, 0)
                )
                for name in names
            },
        )

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        chain = request.extra.get(self._chain_key)
        if not isinstance(chain, PrefixChain):
            return
        targets: list[Endpoint] = []
        primary = result.profile_results.get(result.primary_profile_name)
        if primary is not None and primary.targets:
            targets.append(primary.targets[0])
        prefill = result.profile_results.get("prefill")
        if prefill is not None and prefill.targets and result.primary_profile_name != "prefill":
            targets.append(prefill.targets[0])
        hashes = chain.all()
        if not hashes:
            return
        for target in targets:
            blocks = target.metrics.cache_num_gpu_blocks
            capacity = blocks if self.auto_tune and blocks > 0 else None
            self.index.add(target.name, hashes, capacity)

    def endpoints_removed(self, names: Sequence[str]) -> None:
        self.index.remove(names)


def create(name: str, params: Params, ctx: PluginContext) -> ApproxPrefixCacheProducer:
    block_size_tokens = params.get_int("blockSizeTokens", 16, minimum=1)
    legacy = params.get_int("blockSize", 0, minimum=0)  # deprecated; counts tokens too
    if legacy > 0 and not params.has("blockSizeTokens"):
        block_size_tokens = legacy
    return ApproxPrefixCacheProducer(
        name,
        ctx.clock,
        auto_tune=params.get_bool("autoTune", True),
        block_size_tokens=block_size_tokens,
        max_prefix_blocks=params.get_int("maxPrefixBlocksToMatch", 2048, minimum=0),
        max_prefix_tokens=params.get_int("maxPrefixTokensToMatch", 131072, minimum=0),
        lru_capacity_per_server=params.get_int("lruCapacityPerServer", 31250, minimum=1),
    )
