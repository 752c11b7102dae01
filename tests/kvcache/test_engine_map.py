"""EngineMap: bounded work per update (one freeze or one merge), capped segments, lookups."""

from __future__ import annotations

import random

from kvgate.kvcache.engine_map import EngineMap


def test_each_update_freezes_or_merges_at_most_once_and_segments_stay_capped() -> None:
    rng = random.Random(7)
    emap = EngineMap(young_max=32, max_segment=128)
    truth: dict[int, int] = {}
    for _ in range(400):
        before = emap.num_segments
        pairs = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(rng.randint(1, 20))]
        truth.update(pairs)
        emap.update(pairs)
        assert emap.num_segments in (before - 1, before, before + 1)
        assert all(len(keys) <= 128 for keys in emap._keys)
    assert len(emap) == len(truth)  # random hashes: no duplicates to keep
    hashes = list(truth)
    assert [emap.get(h) for h in hashes[::5]] == [truth[h] for h in hashes[::5]]
    assert emap.get_many(hashes[1::3]) == [truth[h] for h in hashes[1::3]]
    emap.compact()
    assert not emap.young and emap.get_many(hashes) == [truth[h] for h in hashes]
    # trimming drops whole oldest segments, never more than one max_segment too many
    emap.trim(len(truth) // 2)
    assert len(truth) // 2 - 128 <= len(emap) <= len(truth) // 2
    assert [emap.get(h) for h in hashes[-50:]] == [truth[h] for h in hashes[-50:]]
