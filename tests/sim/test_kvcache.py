"""The block pool: reference counts, LRU eviction order, prefix lookup, the CPU tier."""

from __future__ import annotations

from kvgate.kvcache.events import BlockRemoved, BlockStored
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.sim.kvcache import BlockMeta, KVCache


def metas(tokens: list[int], bs: int) -> list[BlockMeta]:
    hashes = block_hashes(tokens, bs)
    return [
        BlockMeta(
            h, hashes[i - 1] if i else None, tuple(tokens[i * bs : (i + 1) * bs]), None, None, None
        )
        for i, h in enumerate(hashes)
    ]


def test_lru_eviction_takes_oldest_free_blocks_last_blocks_first() -> None:
    kv = KVCache(4, 2)
    a = metas([1, 2, 3, 4], 2)
    blocks_a = kv.allocate(2)
    kv.cache_blocks(blocks_a, a)
    stored = kv.take_events()
    assert isinstance(stored[0], BlockStored)
    assert stored[0].block_hashes == [to_event_hash(m.block_hash) for m in a]
    assert stored[0].parent_block_hash is None and stored[0].token_ids == [1, 2, 3, 4]
    assert kv.usage() == 0.5
    kv.free_blocks(blocks_a)
    assert kv.usage() == 0.0 and len(kv.cached) == 2  # cached but free: usage 0

    # A lookup of the same tokens hits both blocks (nothing evicted yet).
    hit = kv.lookup([m.block_hash for m in a], 2)
    assert hit.gpu_blocks == blocks_a

    # Three fresh blocks: the two never-used ones first, then the *last* block of a.
    fresh = kv.allocate(3)
    assert blocks_a[1] in fresh and blocks_a[0] not in fresh
    removed = kv.take_events()
    assert removed == [BlockRemoved([to_event_hash(a[1].block_hash)], medium="GPU", group_idx=0)]
    assert kv.lookup([m.block_hash for m in a], 2).gpu_blocks == [blocks_a[0]]


def test_referenced_blocks_are_never_evicted_and_hits_take_references() -> None:
    kv = KVCache(3, 2)
    a = metas([1, 2, 3, 4], 2)
    blocks = kv.allocate(2)
    kv.cache_blocks(blocks, a)
    hit = kv.lookup([m.block_hash for m in a], 2)
    assert kv.can_allocate(hit, 1)
    assert not kv.can_allocate(hit, 2)
    taken = kv.take_hit(hit)
    assert [kv.ref_cnt[b] for b in taken] == [2, 2]
    kv.free_blocks(blocks)
    assert kv.num_free_blocks == 1
    kv.free_blocks(taken)
    assert kv.num_free_blocks == 3


def test_cpu_tier_keeps_evicted_blocks_and_loads_them_back() -> None:
    kv = KVCache(2, 2, offload_blocks=1)
    a = metas([1, 2, 3, 4], 2)
    blocks = kv.allocate(2)
    kv.cache_blocks(blocks, a)
    kv.free_blocks(blocks)
    kv.take_events()
    kv.allocate(1)  # evicts a[1] (last block first) to CPU
    events = kv.take_events()
    assert events[0] == BlockRemoved([to_event_hash(a[1].block_hash)], medium="GPU", group_idx=0)
    assert isinstance(events[1], BlockStored) and events[1].medium == "CPU"
    assert events[1].parent_block_hash == to_event_hash(a[0].block_hash)
    hit = kv.lookup([m.block_hash for m in a], 2)
    assert hit.gpu_blocks == [blocks[0]] and hit.cpu_hashes == [a[1].block_hash]
    assert not kv.can_allocate(hit, 0)  # no free GPU block to load into


def test_loading_from_a_full_cpu_tier_keeps_every_block_of_the_hit() -> None:
    # Loading CPU blocks back takes GPU blocks; the GPU blocks they evict go to the CPU tier,
    # which is full and evicts its oldest entries: those must not be the hit's own blocks.
    kv = KVCache(4, 2, offload_blocks=2)
    x = metas([1, 2, 3, 4], 2)
    bx = kv.allocate(2)
    kv.cache_blocks(bx, x)
    kv.free_blocks(bx)
    y = metas([5, 6, 7, 8, 9, 10, 11, 12], 2)
    by = kv.allocate(4)  # evicts both blocks of x to CPU
    kv.cache_blocks(by, y)
    kv.free_blocks(by)
    hit = kv.lookup([m.block_hash for m in x], 2)
    assert hit.gpu_blocks == [] and hit.cpu_hashes == [m.block_hash for m in x]
    assert kv.can_allocate(hit, 0)
    kv.take_events()
    loaded = kv.take_hit(hit)
    assert len(loaded) == 2
    assert [kv.cached[m.block_hash] for m in x] == loaded
    stored_gpu = [e for e in kv.take_events() if isinstance(e, BlockStored) and e.medium == "GPU"]
    assert [h for e in stored_gpu for h in e.block_hashes] == [
        to_event_hash(m.block_hash) for m in x
    ]
