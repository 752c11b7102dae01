"""The simulator's paged KV cache: block pool, prefix cache, LRU eviction, CPU offload tier.

Follows vLLM v1's block pool (vllm/v1/core/block_pool.py) in behaviour:

- ``num_blocks`` blocks of ``block_size`` tokens; a request holds a list of block ids.
- A full block is *cached* under its block hash (``kvgate.kvcache.hashing``); a later
  request whose hash chain matches reuses it (reference count + 1) instead of recomputing.
- Blocks with reference count 0 sit in the free queue in LRU order (front = evicted first).
  A freed request's blocks are appended tail-first, so its last blocks go before its first.
  Taking a cached block from the free queue evicts it from the prefix cache
  (a ``BlockRemoved`` event).
- With a CPU tier (``offload_blocks > 0``), a block evicted from GPU is copied to CPU
  (``BlockStored`` medium CPU) and may come back on a later hit, costing load time;
  the CPU tier evicts in LRU order too (``BlockRemoved`` medium CPU).

Usage (``kv_cache_usage_perc``) counts only blocks with a reference, so it is 0 when idle,
as in real vLLM.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvgate.kvcache.events import BlockRemoved, BlockStored, KVCacheEvent
from kvgate.kvcache.hashing import BlockHash, to_event_hash

__all__ = ["BlockMeta", "KVCache", "PrefixHit"]

GPU = "GPU"
CPU = "CPU"


@dataclass(slots=True)
class BlockMeta:
    """What a cached block holds; kept so an eviction to CPU can be announced in full."""

    block_hash: BlockHash
    parent_hash: BlockHash | None
    token_ids: tuple[int, ...]
    extra_keys: tuple[object, ...] | None
    lora_id: int | None
    lora_name: str | None


@dataclass(slots=True)
class PrefixHit:
    """The result of a prefix lookup: GPU blocks to reuse and CPU blocks to load back."""

    gpu_blocks: list[int]
    cpu_hashes: list[BlockHash]

    @property
    def num_blocks(self) -> int:
        return len(self.gpu_blocks) + len(self.cpu_hashes)


class KVCache:
    """Block pool plus prefix-cache map; every mutation appends its KV events to ``events``."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        offload_blocks: int = 0,
        enable_prefix_caching: bool = True,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.offload_blocks = offload_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_cnt: list[int] = [0] * num_blocks
        self.meta: list[BlockMeta | None] = [None] * num_blocks
        #: block hash -> block id of every cached GPU block
        self.cached: dict[bytes, int] = {}
        #: free blocks in LRU order (front is evicted first)
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        #: CPU tier: block hash -> meta, LRU order
        self.cpu: OrderedDict[bytes, BlockMeta] = OrderedDict()
        #: KV events produced since the engine last took them
        self.events: list[KVCacheEvent] = []
        self.num_evicted_blocks = 0

    # --- queries ---------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    def usage(self) -> float:
        """Fraction of blocks held by requests (vLLM's kv_cache_usage_perc)."""
        return (self.num_blocks - len(self.free)) / self.num_blocks

    def lookup(self, hashes: list[BlockHash], max_blocks: int) -> PrefixHit:
        """The longest cached prefix of ``hashes`` (at most ``max_blocks``), GPU then CPU."""
        gpu: list[int] = []
        cpu: list[BlockHash] = []
        if not self.enable_prefix_caching:
            return PrefixHit(gpu, cpu)
        cached = self.cached
        limit = min(max_blocks, len(hashes))
        i = 0
        while i < limit:
            block = cached.get(hashes[i])
            if block is None:
                break
            gpu.append(block)
            i += 1
        if self.offload_blocks:
            while i < limit and hashes[i] in self.cpu:
                cpu.append(hashes[i])
                i += 1
        return PrefixHit(gpu, cpu)

    def can_allocate(self, hit: PrefixHit, num_new_blocks: int) -> bool:
        """Whether ``hit`` can be taken and ``num_new_blocks`` more allocated now."""
        free_hits = sum(1 for b in hit.gpu_blocks if self.ref_cnt[b] == 0)
        return num_new_blocks + len(hit.cpu_hashes) <= len(self.free) - free_hits

    # --- mutations -------------------------------------------------------------------------

    def take_hit(self, hit: PrefixHit) -> list[int]:
        """Reference the hit's GPU blocks and load its CPU blocks; returns the block ids.

        Call :meth:`can_allocate` first.
        """
        blocks = list(hit.gpu_blocks)
        for b in blocks:
            if self.ref_cnt[b] == 0:
                del self.free[b]
            self.ref_cnt[b] += 1
        # Take the CPU copies first: each load pops a GPU block, whose eviction may offload it
        # into a full CPU tier and push out the oldest CPU entries, the hit's later ones too.
        loaded = [self.cpu[h] for h in hit.cpu_hashes]
        for h in hit.cpu_hashes:
            self.cpu.move_to_end(h)
        for meta in loaded:
            b = self._pop_free()
            self.ref_cnt[b] = 1
            self.meta[b] = meta
            self.cached[meta.block_hash] = b
            blocks.append(b)
        if loaded:
            self._emit_stored(loaded, GPU)
        return blocks

    def allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks (evicting cached free blocks in LRU order). Check capacity first."""
        out = []
        for _ in range(n):
            b = self._pop_free()
            self.ref_cnt[b] = 1
            out.append(b)
        return out

    def cache_blocks(self, block_ids: list[int], metas: list[BlockMeta]) -> int:
        """Register newly computed full blocks under their hashes and announce them.

        A block whose hash is already cached (computed by another request in the same step)
        stays an uncached duplicate, as no second copy is needed. Returns how many blocks
        entered the cache.
        """
        if not self.enable_prefix_caching:
            return 0
        stored: list[BlockMeta] = []
        created = 0
        for b, meta in zip(block_ids, metas, strict=True):
            if meta.block_hash in self.cached:
                if stored:
                    self._emit_stored(stored, GPU)
                    stored = []
                continue
            self.cached[meta.block_hash] = b
            self.meta[b] = meta
            stored.append(meta)
            created += 1
        if stored:
            self._emit_stored(stored, GPU)
        return created

    def free_blocks(self, block_ids: list[int]) -> None:
        """Drop one reference from each block; unreferenced ones join the free queue tail-first."""
        ref = self.ref_cnt
        free = self.free
        for b in reversed(block_ids):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def reset(self) -> bool:
        """Drop every cached block that no request holds (vLLM's reset_prefix_cache)."""
        if len(self.free) != self.num_blocks:
            return False
        self.cached.clear()
        self.meta = [None] * self.num_blocks
        self.cpu.clear()
        from kvgate.kvcache.events import AllBlocksCleared

        self.events.append(AllBlocksCleared())
        return True

    def take_events(self) -> list[KVCacheEvent]:
        events = self.events
        self.events = []
        return events

    # --- internals -------------------------------------------------------------------------

    def _pop_free(self) -> int:
        b, _ = self.free.popitem(last=False)
        meta = self.meta[b]
        if meta is not None:
            self.meta[b] = None
            if self.cached.get(meta.block_hash) == b:
                del self.cached[meta.block_hash]
                self.num_evicted_blocks += 1
                self.events.append(
                    BlockRemoved([to_event_hash(meta.block_hash)], medium=GPU, group_idx=0)
                )
                if self.offload_blocks:
                    self._offload(meta)
        return b

    def _offload(self, meta: BlockMeta) -> None:
        if meta.block_hash in self.cpu:
            self.cpu.move_to_end(meta.block_hash)
            return
        while len(self.cpu) >= self.offload_blocks:
            old_hash, _ = self.cpu.popitem(last=False)
            self.events.append(BlockRemoved([to_event_hash(old_hash)], medium=CPU, group_idx=0))
        self.cpu[meta.block_hash] = meta
        self._emit_stored([meta], CPU)

    def _emit_stored(self, metas: list[BlockMeta], medium: str) -> None:
        """One BlockStored per run of chained blocks (each block's parent is the one before)."""
        run: list[BlockMeta] = []
        for meta in metas:
            if run and (meta.parent_hash != run[-1].block_hash or meta.lora_id != run[0].lora_id):
                self._stored_event(run, medium)
                run = []
            run.append(meta)
        if run:
            self._stored_event(run, medium)

    def _stored_event(self, run: list[BlockMeta], medium: str) -> None:
        first = run[0]
        tokens: list[int] = []
        for meta in run:
            tokens.extend(meta.token_ids)
        self.events.append(
            BlockStored(
                block_hashes=[to_event_hash(m.block_hash) for m in run],
                parent_block_hash=(
                    to_event_hash(first.parent_hash) if first.parent_hash is not None else None
                ),
                token_ids=tokens,
                block_size=self.block_size,
                lora_id=first.lora_id,
                medium=medium,
                lora_name=first.lora_name,
                extra_keys=[list(m.extra_keys) if m.extra_keys is not None else None for m in run],
                group_idx=0,
                kv_cache_spec_kind="full_attention",
            )
        )
