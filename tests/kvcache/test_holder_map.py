"""kvcache.holder_map: frozen segments behave exactly like the young dict they replace."""

from __future__ import annotations

import random

import pytest

from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.holder_map import HolderMap
from kvgate.kvcache.index import KVBlockIndex

BS = 2
ENDPOINTS = [f"10.0.0.{i}:8000" for i in range(40)]  # 40 slots x 2 tiers: masks of 2 words


def _engine_hash(tokens: tuple[int, ...]) -> int:
    return hash(("engine", tokens)) & ((1 << 64) - 1)


def _random_batch(rng: random.Random, docs: list[list[int]]) -> tuple[str, EventBatch]:
    endpoint = rng.choice(ENDPOINTS[: rng.choice((3, 40))])
    roll = rng.random()
    if roll < 0.03:
        return endpoint, EventBatch(0.0, [AllBlocksCleared()])
    prompt = rng.choice(docs) + [rng.randrange(50) for _ in range(rng.randrange(12))]
    n = len(prompt) // BS
    hashes = [_engine_hash(tuple(prompt[: (i + 1) * BS])) for i in range(n)]
    medium = rng.choice(("GPU", "GPU", "CPU"))
    if roll < 0.35:
        removed = rng.sample(hashes, rng.randint(1, len(hashes)))
        return endpoint, EventBatch(0.0, [BlockRemoved(removed, medium)])
    start = rng.randrange(n)
    end = rng.randint(start + 1, n)
    parent = hashes[start - 1] if start else None
    tokens = prompt[start * BS : end * BS]
    event = BlockStored(hashes[start:end], parent, tokens, BS, None, medium, None)
    return endpoint, EventBatch(0.0, [event])


def _same(frozen: KVBlockIndex, young: KVBlockIndex, prompts: list[list[int]]) -> None:
    assert frozen.num_blocks == young.num_blocks
    assert frozen.num_entries == young.num_entries
    assert frozen.stats.evicted_blocks == young.stats.evicted_blocks
    for name in ENDPOINTS:
        assert frozen.endpoint_entries(name) == young.endpoint_entries(name)
    for prompt in prompts:
        keys = young.request_keys(prompt)
        assert frozen.match(keys, ENDPOINTS) == young.match(keys, ENDPOINTS)
        for key in keys[::3]:
            assert frozen.holders(key) == young.holders(key)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_index_with_frozen_holders_matches_the_dict_only_index(seed: int) -> None:
    rng = random.Random(seed)
    docs = [[rng.randrange(50) for _ in range(rng.randrange(8, 40))] for _ in range(30)]
    frozen = KVBlockIndex(block_size=BS, max_blocks=300, young_blocks=16)
    young = KVBlockIndex(block_size=BS, max_blocks=300, young_blocks=10**9)
    for step in range(1500):
        endpoint, batch = _random_batch(rng, docs)
        frozen.apply_batch(endpoint, batch, 0.0)
        young.apply_batch(endpoint, batch, 0.0)
        if rng.random() < 0.01:
            frozen.drop_endpoint(endpoint)
            young.drop_endpoint(endpoint)
        if step % 50 == 0:
            _same(frozen, young, rng.sample(docs, 5))
    _same(frozen, young, docs)
    assert young._holders.num_segments == 0
    assert frozen._holders.num_segments >= 1 and frozen._holders.num_frozen > 0
    assert frozen.stats.evicted_blocks > 0 and frozen.stats.purged_endpoints > 0


def test_holder_map_keeps_lru_order_and_wide_masks_across_freezes() -> None:
    hm = HolderMap(young_max=4)
    wide = 1 << 130 | 1
    for key in range(1, 11):  # keys 1..8 frozen (two segments merged), 9 and 10 young
        hm.young[key] = wide if key == 3 else 1 << key
        hm.maybe_freeze()
    assert hm.num_frozen == 8 and len(hm) == 10
    assert hm.get_many([3, 5, 10, 11]) == [wide, 1 << 5, 1 << 10, None]
    masks, where = hm.lookup([2, 3, 4])
    hm.bump(2, where[2], masks[0] | 1)  # key 2 becomes the youngest
    hm.set(3, where[3], 1)  # cleared bits keep key 3's place
    hm.set(4, where[4], 0)  # deleted
    assert len(hm) == 9 and hm.get_many([2, 3, 4]) == [1 << 2 | 1, 1, None]
    assert hm.evict_oldest(3) == [1 << 1, 1, 1 << 5]  # keys 1, 3, 5
    hm.sweep(1 << 2 | 1 << 10)
    assert hm.get_many([2, 10]) == [1, None]
    assert hm.evict_oldest(10) == [1 << 6, 1 << 7, 1 << 8, 1 << 9, 1]  # frozen, then young
    assert len(hm) == 0 and hm.num_segments == 0
