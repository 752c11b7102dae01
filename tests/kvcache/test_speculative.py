"""Predicted blocks: in flight, then a TTL; the longest predicted prefix against brute force."""

from __future__ import annotations

import random

from kvgate.kvcache.hashing import request_keys
from kvgate.kvcache.speculative import SpeculativeBlocks
from plugins.kit import FakeClock


def _chain(tokens: list[int]) -> list[int]:
    return list(request_keys(tokens, 4))


def test_in_flight_then_ttl_then_gone() -> None:
    clock = FakeClock()
    spec = SpeculativeBlocks(2.0, clock)
    keys = _chain(list(range(40)))  # 10 blocks
    assert spec.held("a", keys) == 0
    spec.add("a", keys)
    assert spec.held("a", keys) == 10 and spec.held("b", keys) == 0
    clock.advance(600)  # queued for ten minutes: still predicted while in flight
    assert spec.held("a", keys) == 10
    spec.finish("a", keys)
    clock.advance(1.9)
    assert spec.held("a", keys) == 10
    clock.advance(0.2)
    assert spec.held("a", keys) == 0
    spec.add("a", keys[:1])  # expiring happens on the next add: nothing of the old is left
    assert spec.num_keys("a") == 1


def test_a_second_request_keeps_shared_blocks_alive() -> None:
    clock = FakeClock()
    spec = SpeculativeBlocks(1.0, clock)
    shared = list(range(16))
    first, second = _chain(shared + [100] * 8), _chain(shared + [200] * 8)
    spec.add("a", first)
    spec.add("a", second)
    spec.finish("a", first)
    clock.advance(5)
    # the first request's own blocks expired; the shared ones live on with the second
    assert spec.held("a", first) == 4 and spec.held("a", second) == 6
    spec.finish("a", second)
    clock.advance(0.5)
    spec.finish("a", [])  # no-op
    assert spec.held("a", second) == 6
    clock.advance(1)
    assert spec.held("a", second) == 0


def test_held_equals_a_linear_walk_on_random_chains() -> None:
    rng = random.Random(5)
    clock = FakeClock()
    spec = SpeculativeBlocks(3.0, clock)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(4, 40))] for _ in range(6)]
    chains = []
    for _ in range(200):
        tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(0, 24))]
        chains.append(_chain(tokens))
    live: list[list[int]] = []
    for step in range(400):
        action = rng.random()
        if action < 0.4:
            keys = rng.choice(chains)
            spec.add("a", keys)
            live.append(keys)
        elif action < 0.7 and live:
            spec.finish("a", live.pop(rng.randrange(len(live))))
        else:
            clock.advance(rng.random())
        probe = rng.choice(chains)
        predicted = spec.num_keys("a")
        walk = 0
        for key in probe:
            if not _predicted(spec, key):
                break
            walk += 1
        assert spec.held("a", probe) == walk, step
        assert predicted >= walk


def _predicted(spec: SpeculativeBlocks, key: int) -> bool:
    return spec.held("a", [key]) == 1


def test_drop_forgets_an_endpoint() -> None:
    spec = SpeculativeBlocks(2.0, FakeClock())
    keys = _chain(list(range(8)))
    spec.add("a", keys)
    spec.drop("a")
    assert spec.held("a", keys) == 0 and spec.num_keys("a") == 0
