"""The precise index: engine hashes -> request keys -> endpoints and tiers, from real events."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kvgate.kvcache import events, hashing
from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.index import KVBlockIndex
from kvgate.kvcache.metrics import register_metrics
from kvgate.kvcache.tokenize import Tokenizer

DATA = Path(__file__).parent.parent / "data" / "vllm-cpu-kv-events.txt"
A = "127.0.0.1:18100"
B = "127.0.0.1:18101"


def _payloads() -> list[bytes]:
    text = DATA.read_text().splitlines()
    return [bytes.fromhex(line) for line in text if re.fullmatch(r"[0-9a-f]{40,}", line)]


def _stored(tokens: list[int], bs: int, parent: int | None = None, medium: str = "GPU",
            base: int = 0) -> BlockStored:  # fmt: skip
    n = len(tokens) // bs
    return BlockStored([base + i + 1 for i in range(n)], parent, tokens, bs, medium=medium)


def _batch(*evs: object) -> EventBatch:
    return EventBatch(0.0, list(evs))  # type: ignore[arg-type]


# --- request keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("bs", [1, 4, 16, 32, 64])
def test_poly64_numpy_and_python_paths_agree_and_chain(bs: int) -> None:
    rng = random.Random(bs)
    tokens = [rng.randrange(200_000) for _ in range(bs * 40 + 3)]
    n = len(tokens) // bs
    keys = hashing.poly64_request_keys(tokens, bs, 12345)
    assert len(keys) == n
    assert keys == hashing._poly64_python(tokens, bs, 12345, n)
    # chaining from block 9's key gives the same keys as hashing the whole prompt
    assert hashing.poly64_request_keys(tokens[bs * 10 :], bs, keys[9]) == keys[10:]
    # one token changed changes that block's key and every later one, not earlier ones
    other = list(tokens)
    other[bs * 5] += 1
    changed = hashing.poly64_request_keys(other, bs, 12345)
    assert changed[:5] == keys[:5] and all(
        a != b for a, b in zip(changed[5:], keys[5:], strict=True)
    )
    assert len(set(keys)) == len(keys)


# --- real vLLM events ---------------------------------------------------------------------------


def test_real_chat_event_matches_the_tokenized_prompt() -> None:
    index = KVBlockIndex()
    index.apply_batch(A, events.decode_batch(_payloads()[0]), received_at=0.0)
    assert index.block_size == 32  # learned from the event
    ids = Tokenizer.default().encode_chat(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    match = index.match(index.request_keys(ids), [A, B])
    assert match.num_blocks == 1
    assert match.blocks == {A: 1} and match.weighted == {A: 1.0}
    other = Tokenizer.default().encode_chat([{"role": "user", "content": "Something else?"}])
    assert index.match(index.request_keys(other), [A]).blocks == {}


def test_real_47_block_event_and_a_removed_block_in_the_middle() -> None:
    index = KVBlockIndex()
    batch = events.decode_batch(_payloads()[1])
    index.apply_batch(A, batch, received_at=0.0)
    stored = batch.events[0]
    assert isinstance(stored, BlockStored)
    prompt = [*stored.token_ids, 5, 6, 7]
    keys = index.request_keys(prompt)
    assert len(keys) == 47
    assert index.match(keys, [A]).blocks == {A: 47}
    assert index.num_blocks == 47 and index.num_entries == 47
    # evict block 10 (0-based): the consecutive prefix is now 10 blocks
    index.apply_batch(A, _batch(BlockRemoved([stored.block_hashes[10]], "GPU")), 0.0)
    assert index.match(keys, [A]).blocks == {A: 10}
    assert index.num_entries == 46
    # a continuation event chains from the parent's request key
    more = list(range(100, 132))
    h = 99
    index.apply_batch(A, _batch(BlockStored([h], stored.block_hashes[-1], more, 32, medium="GPU")))
    longer = index.request_keys(stored.token_ids + more)
    assert longer[:47] == keys and len(longer) == 48
    assert index.holders(longer[47]) == {A: ["gpu"]}


# --- tiers, entries, endpoints ------------------------------------------------------------------


def test_tiers_weight_and_entries_count_once_per_endpoint() -> None:
    index = KVBlockIndex(block_size=4)
    tokens = list(range(40))
    keys = index.request_keys(tokens)
    index.apply_batch(A, _batch(_stored(tokens, 4)))
    index.apply_batch(A, _batch(_stored(tokens[:20], 4, medium="CPU")))  # first 5 offloaded
    assert index.num_entries == 10
    # GPU evicts everything: the CPU copies of the first 5 blocks remain
    index.apply_batch(A, _batch(BlockRemoved(list(range(1, 11)), "GPU")))
    assert index.num_entries == 5
    match = index.match(keys, [A])
    assert match.blocks == {A: 5} and match.weighted[A] == pytest.approx(5 * 0.8)
    # B holds all 10 on GPU
    index.apply_batch(B, _batch(_stored(tokens, 4, base=1000)))
    match = index.match(keys, [A, B])
    assert match.blocks == {A: 5, B: 10}
    assert match.weighted == {A: pytest.approx(4.0), B: 10.0}
    assert index.num_entries == 15


def test_longest_consecutive_prefix_is_per_endpoint() -> None:
    index = KVBlockIndex(block_size=2)
    tokens = list(range(20))
    keys = index.request_keys(tokens)
    index.apply_batch(A, _batch(_stored(tokens, 2)))  # 10 blocks
    index.apply_batch(B, _batch(_stored(tokens[:6], 2, base=50)))  # 3 blocks
    index.apply_batch(A, _batch(BlockRemoved([1], "GPU")))  # A loses block 0
    match = index.match(keys, [A, B, "never-seen:1"])
    assert match.blocks == {B: 3}  # A has a hole at block 0: nothing reusable


def test_all_blocks_cleared_and_drop_endpoint_free_the_slot() -> None:
    index = KVBlockIndex(block_size=2)
    tokens = list(range(12))
    keys = index.request_keys(tokens)
    index.apply_batch(A, _batch(_stored(tokens, 2)))
    index.apply_batch(B, _batch(_stored(tokens, 2, base=100)))
    index.apply_batch(A, _batch(AllBlocksCleared()))
    assert index.match(keys, [A, B]).blocks == {B: 6}
    assert index.endpoints() == [B] and index.num_entries == 6
    # a new endpoint reuses A's slot and inherits nothing
    index.apply_batch("10.0.0.9:1", _batch(_stored(tokens[:4], 2, base=200)))
    assert index.match(keys, ["10.0.0.9:1", A]).blocks == {"10.0.0.9:1": 2}
    index.drop_endpoint(B)
    index.drop_endpoint(B)  # idempotent
    assert index.match(keys, [B]).blocks == {}
    assert index.stats.events_cleared == 1 and index.stats.purged_endpoints == 2


def test_events_that_cannot_be_keyed_are_dropped_and_counted() -> None:
    index = KVBlockIndex(block_size=4)
    index.apply_batch(A, _batch(BlockStored([1], 777, [1, 2, 3, 4], 4, medium="GPU")))
    index.apply_batch(A, _batch(BlockStored([2], None, [1] * 8, 8, medium="GPU")))
    index.apply_batch(A, _batch(BlockStored([3], None, [1] * 4, 4, medium="DISK")))
    assert index.stats.dropped_events == {
        "unknown_parent": 1,
        "block_size_mismatch": 1,
        "unknown_medium": 1,
    }
    assert index.num_blocks == 0


def test_placeholder_event_without_tokens_uses_known_engine_hashes() -> None:
    index = KVBlockIndex(block_size=4)
    tokens = list(range(16))
    keys = index.request_keys(tokens)
    index.apply_batch(A, _batch(_stored(tokens, 4)))
    # an offload connector reports the CPU copies by hash only
    index.apply_batch(A, _batch(BlockStored([1, 2, 3, 4], None, [], 4, medium="CPU")))
    index.apply_batch(A, _batch(BlockRemoved([1, 2, 3, 4], "GPU")))
    assert index.match(keys, [A]).blocks == {A: 4}
    assert index.holders(keys[0]) == {A: ["cpu"]}


def test_lora_blocks_chain_from_their_own_seed() -> None:
    index = KVBlockIndex(block_size=4)
    tokens = list(range(8))
    event = BlockStored([1, 2], None, tokens, 4, medium="GPU", lora_name="adapter-a")
    index.apply_batch(A, _batch(event))
    assert index.lora_names == {"adapter-a"}
    assert index.match(index.request_keys(tokens), [A]).blocks == {}
    assert index.match(index.request_keys(tokens, "adapter-a"), [A]).blocks == {A: 2}


def test_a_large_index_sweeps_a_dropped_endpoint_a_chunk_per_batch() -> None:
    from kvgate.kvcache.index import SWEEP_CHUNK

    index = KVBlockIndex(block_size=1, max_blocks=1 << 20)
    n = 3 * SWEEP_CHUNK
    a_tokens = list(range(10_000, 10_000 + n))
    index.apply_batch(A, _batch(BlockStored(list(range(1, n + 1)), None, a_tokens, 1)))
    index.apply_batch(B, _batch(BlockStored([n + 1, n + 2], None, [5, 6], 1)))
    keys = index.request_keys(a_tokens)
    index.apply_batch(A, _batch(AllBlocksCleared()))  # the engine reset its cache
    assert index.sweeping  # not one pass over every block on the event loop
    assert index.match(keys, [A]).blocks == {} and index.num_entries == 2
    # A comes back while the sweep runs: a fresh slot, holding only what it stores now.
    index.apply_batch(A, _batch(BlockStored([1], None, a_tokens[:1], 1)))
    assert index.match(keys, [A]).blocks == {A: 1}
    batches = 0
    while index.sweeping:
        index.apply_batch(B, _batch(BlockStored([9000 + batches], None, [7 + batches], 1)))
        batches += 1
        assert batches <= n // SWEEP_CHUNK + 16  # (a chunk a batch, plus a step per shard)
    assert batches >= n // SWEEP_CHUNK - 1
    # Swept: the retired slot's bits are gone, every count adds up, the slot is free again.
    assert index.num_blocks == index.num_entries == 1 + 2 + batches
    assert index.match(keys, [A]).blocks == {A: 1}
    index.apply_batch("10.0.0.9:1", _batch(BlockStored([1], None, a_tokens[:1], 1)))
    assert index.match(keys, ["10.0.0.9:1", A]).blocks == {"10.0.0.9:1": 1, A: 1}


def test_cap_evicts_the_oldest_blocks_and_restoring_makes_a_block_young() -> None:
    index = KVBlockIndex(block_size=1, max_blocks=64)
    first = index.request_keys([7])
    index.apply_batch(A, _batch(BlockStored([1], None, [7], 1, medium="GPU")))
    for i in range(2, 60):
        index.apply_batch(A, _batch(BlockStored([i], None, [1000 + i], 1, medium="GPU")))
    # B stores the oldest block again: it moves to the young end
    index.apply_batch(B, _batch(BlockStored([1], None, [7], 1, medium="GPU")))
    for i in range(60, 100):
        index.apply_batch(A, _batch(BlockStored([i], None, [1000 + i], 1, medium="GPU")))
    assert index.num_blocks <= 64
    assert index.stats.evicted_blocks > 0
    assert index.match(first, [A, B]).blocks == {A: 1, B: 1}
    assert index.num_entries == sum(index.endpoint_entries(e) for e in (A, B))
    oldest = index.request_keys([1002])
    assert index.match(oldest, [A]).blocks == {}


@pytest.mark.parametrize("young_max", [4, 1 << 16])  # translations frozen in segments, or not
def test_a_long_cached_parent_keeps_its_translation(young_max: int) -> None:
    from kvgate.kvcache.engine_map import EngineMap

    # A shared system prompt stays cached and is never stored again, while thousands of
    # other blocks come and go. Translations outlive evicted blocks and are trimmed oldest
    # first (at 2x max_blocks), but not the prompt's: every request that extends it names
    # it as the parent.
    index = KVBlockIndex(block_size=1, max_blocks=64)
    # (segments of at most max_blocks // 4, as the index sizes them, so a trim drops the old)
    index._engine = EngineMap(young_max=young_max, max_segment=16)
    index.apply_batch(A, _batch(BlockStored([1], None, [7], 1, medium="GPU")))
    for i in range(2, 1000):
        parent = 1 if i % 10 == 0 else None  # a request under the system prompt
        evicted = [BlockRemoved([i - 1], "GPU")] if i > 2 else []
        stored = BlockStored([i], parent, [1000 + i], 1, medium="GPU")
        index.apply_batch(A, _batch(*evicted, stored))
    assert len(index._engine) <= 2 * 64 + 4  # trimmed all along
    index.apply_batch(A, _batch(BlockStored([5000], 1, [42], 1, medium="GPU")))
    assert index.stats.dropped_events.get("unknown_parent", 0) == 0
    assert index.match(index.request_keys([7, 42]), [A]).blocks == {A: 2}


def test_metrics_are_exported_with_kvgate_kv_index_names() -> None:
    registry = CollectorRegistry()
    register_metrics(registry)
    index = KVBlockIndex(block_size=2)
    tokens = list(range(8))
    index.apply_batch(A, EventBatch(100.0, [_stored(tokens, 2)]), received_at=100.25)
    index.match(index.request_keys([*tokens, 1]), [A])
    index.match(index.request_keys([9] * 8), [A])
    text = generate_latest(registry).decode()
    for line in (
        "kvgate_kv_index_blocks ",
        "kvgate_kv_index_entries ",
        'kvgate_kv_index_events_total{type="BlockStored"} ',
        "kvgate_kv_index_lag_seconds ",
        "kvgate_kv_index_hit_ratio ",
    ):
        assert line in text
    assert index.stats.hit_ratio == pytest.approx(0.5)
    assert index.stats.last_lag_s == pytest.approx(0.25)


# --- compact engine map -------------------------------------------------------------------------


def test_engine_map_segments_merge_lookup_and_trim() -> None:
    from kvgate.kvcache.engine_map import EngineMap

    rng = random.Random(5)
    emap = EngineMap(young_max=64)
    truth: dict[int, int] = {}
    for _ in range(40):
        pairs = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(rng.randint(1, 30))]
        truth.update(pairs)
        emap.update(pairs)
    emap.update(list(truth.items())[:50])  # duplicates of frozen translations
    assert 1 <= emap.num_segments <= 4 and len(emap) >= len(truth)
    sample = list(truth)[::7]
    assert [emap.get(h) for h in sample] == [truth[h] for h in sample]
    absent = [rng.getrandbits(64) for _ in range(10)]
    queries = sample[:5] + absent + sample[5:12] + [2**64 + 5, -1]
    expected = [truth.get(h) for h in queries]
    assert emap.get_many(queries) == expected
    assert emap.get(2**64 + 5) is None and emap.get(-1) is None
    before = len(emap)
    dropped = emap.trim(before // 2)
    assert dropped > 0 and len(emap) <= before // 2
    assert emap.trim(10**9) == 0


def test_index_works_across_frozen_engine_segments() -> None:
    from kvgate.kvcache.engine_map import EngineMap

    index = KVBlockIndex(block_size=2)
    index._engine = EngineMap(young_max=4)
    tokens = list(range(40))  # 20 blocks in 10 chained events of 2 blocks
    keys = index.request_keys(tokens)
    parent = None
    for i in range(10):
        hashes = [100 + 2 * i, 101 + 2 * i]
        index.apply_batch(A, _batch(BlockStored(hashes, parent, tokens[4 * i : 4 * i + 4], 2)))
        parent = hashes[-1]
    assert index._engine.num_segments >= 1
    assert index.match(keys, [A]).blocks == {A: 20}
    index.apply_batch(A, _batch(BlockRemoved([100 + 7, 100 + 3, 100 + 9, 100 + 11], "GPU")))
    assert index.match(keys, [A]).blocks == {A: 3}
    assert index.num_entries == 16
