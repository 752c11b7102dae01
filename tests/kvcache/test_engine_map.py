"""EngineMap: bounded work per update (one freeze or one merge chunk), capped segments,
lookups that stay right while a merge is half done, trimming."""

from __future__ import annotations

import random

import pytest

from kvgate.kvcache.engine_map import EngineMap


@pytest.mark.parametrize("merge_chunk", [3, 1 << 16])
def test_updates_merge_in_chunks_and_lookups_stay_right(merge_chunk: int) -> None:
    rng = random.Random(merge_chunk)
    emap = EngineMap(young_max=32, max_segment=128, merge_chunk=merge_chunk)
    truth: dict[int, int] = {}
    for step in range(400):
        before = emap.num_segments
        if truth and step % 5 == 0:  # duplicates of earlier translations
            pairs = rng.sample(sorted(truth.items()), min(len(truth), 10))
        else:
            pairs = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(rng.randint(1, 20))]
        truth.update(pairs)
        emap.update(pairs)
        # one freeze (+1) or at most one finished merge (-1) per update
        assert emap.num_segments in (before - 1, before, before + 1)
        assert all(len(keys) <= 128 for keys in emap._keys)
        if step % 20 == 0:
            hashes = list(truth)
            assert emap.get_many(hashes) == [truth[h] for h in hashes]
            assert [emap.get(h) for h in hashes[::7]] == [truth[h] for h in hashes[::7]]
    hashes = list(truth)
    assert emap.get_many(hashes) == [truth[h] for h in hashes]
    emap.compact()
    assert not emap.young and emap.get_many(hashes) == [truth[h] for h in hashes]
    assert len(emap) >= len(truth)
    for keys in emap._keys:  # segments stay sorted and free of duplicates
        assert bool((keys[1:] > keys[:-1]).all())
    absent = [rng.getrandbits(64) for _ in range(10)]
    assert emap.get_many([*absent, 2**64 + 5, -1]) == [None] * 12
    # trimming drops whole oldest segments, never more than one max_segment too many
    size = len(emap)
    emap.trim(size // 2)
    assert size // 2 - 128 <= len(emap) <= size // 2


def test_trim_during_a_merge_abandons_it() -> None:
    rng = random.Random(3)
    emap = EngineMap(young_max=16, max_segment=1 << 10, merge_chunk=2)
    truth: dict[int, int] = {}
    while emap._merge is None:  # until the first merge is under way
        pairs = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(8)]
        truth.update(pairs)
        emap.update(pairs)
    assert emap._merge.older_k is emap._keys[0]
    emap.trim(len(emap) - 1)
    assert emap._merge is None
    for _ in range(200):
        pairs = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(8)]
        truth.update(pairs)
        emap.update(pairs)
    recent = list(truth)[-100:]
    assert emap.get_many(recent) == [truth[h] for h in recent]
