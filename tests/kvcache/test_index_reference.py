"""The precise index against a plain reference model, over random event streams.

The reference keeps, per shard, an ``OrderedDict`` of request key -> {endpoint: tiers} in LRU
order (a block moves to the back when an endpoint or tier that did not hold it stores it) and
evicts the oldest ``over + cap // 64`` blocks of a shard past its cap: the index's documented
semantics, without bit fields, slot recycling, sharded key packing or numpy segments.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

import pytest

from kvgate.kvcache import hashing
from kvgate.kvcache.engine_map import EngineMap
from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.index import KVBlockIndex

BS = 2
ENDPOINTS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]
TIERS = ("gpu", "cpu")
CHECK_EVERY = 100


class Reference:
    """The index's semantics in the plainest form (see the module docstring)."""

    def __init__(self, max_blocks: int, shards: int) -> None:
        self.mask = shards - 1
        self.cap = max(1, max_blocks // shards)
        self.chunk = self.cap // 64
        self.lru: list[OrderedDict[int, dict[str, set[str]]]] = [
            OrderedDict() for _ in range(shards)
        ]
        self.engine: dict[int | bytes, int] = {}
        self.seed = int(hashing.request_key_seed("", "xxh64"))
        self.seen: set[int] = set()

    def stored(self, endpoint: str, event: BlockStored) -> None:
        tier = (event.medium or "gpu").lower()
        if event.parent_block_hash is None:
            parent = self.seed
        elif event.parent_block_hash in self.engine:
            parent = self.engine[event.parent_block_hash]
        else:
            return
        hashes = list(event.block_hashes)
        keys: list[int]
        if event.token_ids:
            keys = list(hashing.request_keys(event.token_ids, BS, parent=parent, algo="poly64"))
        else:
            keys = []
            for h in hashes:
                if h not in self.engine:
                    break
                keys.append(self.engine[h])
            hashes = hashes[: len(keys)]
        for h, k in zip(hashes, keys, strict=True):
            self.engine[h] = k
        for k in keys:
            self.seen.add(k)
            lru = self.lru[k & self.mask]
            holders = lru.get(k)
            if holders is None:
                lru[k] = {endpoint: {tier}}
                if len(lru) > self.cap:
                    for _ in range(len(lru) - self.cap + self.chunk):
                        lru.popitem(last=False)
            elif tier not in holders.get(endpoint, set()):
                holders.setdefault(endpoint, set()).add(tier)
                lru.move_to_end(k)

    def removed(self, endpoint: str, event: BlockRemoved) -> None:
        tier = (event.medium or "gpu").lower()
        for h in event.block_hashes:
            k = self.engine.get(h)
            if k is None:
                continue
            lru = self.lru[k & self.mask]
            holders = lru.get(k)
            if holders is None or tier not in holders.get(endpoint, set()):
                continue
            holders[endpoint].discard(tier)
            if not holders[endpoint]:
                del holders[endpoint]
            if not holders:
                del lru[k]

    def cleared(self, endpoint: str) -> None:
        for lru in self.lru:
            for k in [k for k, holders in lru.items() if endpoint in holders]:
                del lru[k][endpoint]
                if not lru[k]:
                    del lru[k]

    def holders(self, key: int) -> dict[str, list[str]]:
        found = self.lru[key & self.mask].get(key, {})
        return {e: [t for t in TIERS if t in tiers] for e, tiers in found.items()}

    def blocks(self) -> list[int]:
        return [k for lru in self.lru for k in lru]

    def prefix(
        self, keys: Sequence[int], endpoints: list[str]
    ) -> tuple[dict[str, int], dict[str, float]]:
        weight = {"gpu": 1.0, "cpu": 0.8}
        blocks: dict[str, int] = {}
        weighted: dict[str, float] = {}
        for e in endpoints:
            n, w = 0, 0.0
            for k in keys:
                tiers = self.holders(k).get(e)
                if not tiers:
                    break
                n += 1
                w += max(weight[t] for t in tiers)
            if n:
                blocks[e], weighted[e] = n, w
        return blocks, weighted


def _check(
    index: KVBlockIndex, ref: Reference, rng: random.Random, prompts: list[list[int]]
) -> None:
    blocks = ref.blocks()
    assert index.num_blocks == len(blocks) <= index.max_blocks
    for k in blocks:
        assert index.holders(k) == ref.holders(k)
    for k in rng.sample(sorted(ref.seen), min(200, len(ref.seen))):
        assert index.holders(k) == ref.holders(k)  # evicted or removed: gone everywhere
    per_endpoint = {e: sum(1 for k in blocks if e in ref.holders(k)) for e in ENDPOINTS}
    assert {e: index.endpoint_entries(e) for e in ENDPOINTS} == per_endpoint
    assert index.num_entries == sum(per_endpoint.values())
    for tokens in rng.sample(prompts, min(20, len(prompts))):
        keys = index.request_keys(tokens)
        match = index.match(keys, ENDPOINTS)
        expected_blocks, expected_weighted = ref.prefix(keys, ENDPOINTS)
        assert match.blocks == expected_blocks
        assert match.weighted == pytest.approx(expected_weighted)


@pytest.mark.parametrize(
    ("seed", "shard_blocks", "young_max"), [(1, 256, 64), (2, 4096, 64), (3, 128, 1 << 16)]
)
def test_index_matches_the_reference_model(seed: int, shard_blocks: int, young_max: int) -> None:
    rng = random.Random(seed)
    # Events only refer to blocks of the last 150 new chains, whose translations the engine
    # map keeps (it trims the oldest past 2 * max_blocks).
    max_blocks = 1024
    index = KVBlockIndex(block_size=BS, max_blocks=max_blocks, shard_blocks=shard_blocks)
    index._engine = EngineMap(young_max=young_max, max_segment=4 * young_max)
    shards = 1
    while max_blocks > shards * shard_blocks:
        shards *= 2
    ref = Reference(max_blocks, shards)
    past: list[BlockStored] = []
    prompts: list[list[int]] = []
    next_hash = 1
    for step in range(3000):
        endpoint = rng.choice(ENDPOINTS)
        tier = rng.choice(("GPU", "GPU", "CPU"))
        roll = rng.random()
        event: BlockStored | BlockRemoved | AllBlocksCleared
        if roll < 0.45 or not past:
            n = rng.randint(1, 8)
            tokens = [rng.randrange(1000) for _ in range(n * BS)]
            parent = None
            if past and rng.random() < 0.3:  # continue an earlier chain
                before = rng.choice(past[-50:])
                parent = before.block_hashes[-1]
            hashes: list[int | bytes] = list(range(next_hash, next_hash + n))
            next_hash += n
            event = BlockStored(hashes, parent, tokens, BS, medium=tier)
            past.append(event)
            if parent is None:
                prompts.append([*tokens, 1])
        elif roll < 0.7:  # the same blocks on another endpoint or tier (a shared prefix)
            before = rng.choice(past[-100:])  # its parent is among the last 150 chains
            event = BlockStored(
                before.block_hashes, before.parent_block_hash, before.token_ids, BS, medium=tier
            )
        elif roll < 0.75:  # an offload placeholder: hashes only
            before = rng.choice(past[-150:])
            event = BlockStored(before.block_hashes, None, [], BS, medium="CPU")
        elif roll < 0.997:
            before = rng.choice(past[-150:])
            event = BlockRemoved(rng.sample(before.block_hashes, 1), tier)
        else:
            event = AllBlocksCleared()
        index.apply_batch(endpoint, EventBatch(0.0, [event]), received_at=0.0)
        if isinstance(event, BlockStored):
            ref.stored(endpoint, event)
        elif isinstance(event, BlockRemoved):
            ref.removed(endpoint, event)
        else:
            ref.cleared(endpoint)
        if step % CHECK_EVERY == CHECK_EVERY - 1:
            _check(index, ref, rng, prompts)
    _check(index, ref, rng, prompts)
    assert index.stats.evicted_blocks > 0  # the stream went past the cap
    assert index.num_engine_hashes <= 2 * max_blocks
