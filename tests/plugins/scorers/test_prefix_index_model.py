"""The approximate prefix index against a plain reference model (OrderedDict LRU per endpoint,
block-by-block consecutive match), under random add/remove/match sequences; and the invariant
its galloping match relies on (every endpoint's held blocks are prefix-closed)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.plugins.scorers.prefix_cache_scorer import ApproxPrefixIndex, PrefixChain

BLOCK = 2
ALPHABET = "ab"  # few distinct blocks, so chains share prefixes and hit often


def _reference_add(lru: OrderedDict[int, None], hashes: list[int], capacity: int) -> None:
    # Tail first, one hash at a time, evicting as it goes: block 0 ends up most recent, so a
    # chain's tail is evicted before its head (as vLLM frees a request's blocks).
    for h in reversed(hashes):
        lru.pop(h, None)
        lru[h] = None
        while len(lru) > capacity:
            lru.popitem(last=False)
    while len(lru) > capacity:  # kvgate applies the endpoint's current capacity on every add
        lru.popitem(last=False)


def _plain_walk(held: Mapping[int, None], hashes: tuple[int, ...]) -> int:
    m = 0
    while m < len(hashes) and hashes[m] in held:
        m += 1
    return m


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"), st.integers(0, 3), st.text(ALPHABET, max_size=24), st.integers(1, 12)
        ),
        st.tuples(st.just("remove"), st.integers(0, 3), st.just(""), st.just(0)),
        st.tuples(st.just("match"), st.just(0), st.text(ALPHABET, max_size=40), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=30, deadline=None)
@given(ops=ops)
def test_index_matches_reference(ops: list[tuple[str, int, str, int]]) -> None:
    index = ApproxPrefixIndex(default_capacity=8)
    model: dict[str, OrderedDict[int, None]] = {}
    names = [f"e{i}" for i in range(4)]

    def chain(text: str) -> PrefixChain:
        return PrefixChain(text.encode(), BLOCK, seed=5, max_blocks=16)

    for op, who, text, capacity in ops:
        name = names[who]
        if op == "add":
            hashes = list(chain(text).all())
            index.add(name, hashes, capacity)
            _reference_add(model.setdefault(name, OrderedDict()), hashes, capacity)
        elif op == "remove":
            index.remove([name])
            model.pop(name, None)
        else:
            c = chain(text)
            got = index.match_lengths(c, names)
            hashes = c.all()
            want = {n: m for n, lru in model.items() if (m := _plain_walk(lru, hashes))}
            assert got == want
    for n in names:
        assert index.num_blocks(n) == len(model.get(n, ()))


# Longer chains than above (block 1 byte, up to 96 blocks) over a 3-letter alphabet: deep shared
# prefixes, partial evictions of long chains, every gallop and bisection branch.
long_texts = st.text("abc", min_size=0, max_size=96)


@settings(max_examples=60, deadline=None)
@given(
    adds=st.lists(
        st.tuples(st.integers(0, 2), long_texts, st.integers(1, 120)), min_size=1, max_size=30
    ),
    probes=st.lists(long_texts, min_size=1, max_size=8),
    max_blocks=st.sampled_from([1, 7, 64, 256]),
)
def test_galloping_match_equals_plain_walk_on_random_lru_states(
    adds: list[tuple[int, str, int]], probes: list[str], max_blocks: int
) -> None:
    index = ApproxPrefixIndex(default_capacity=50)
    names = ["e0", "e1", "e2", "gone"]
    seen: list[tuple[int, ...]] = []

    def chain(text: str) -> PrefixChain:
        return PrefixChain(text.encode(), 1, seed=11, max_blocks=max_blocks)

    for who, text, capacity in adds:
        hashes = chain(text).all()
        seen.append(hashes)
        index.add(names[who], hashes, capacity)
    held = {n: dict.fromkeys(index._blocks.get(n, ())) for n in names}

    # The invariant: holding block i of any chain means holding blocks 0 … i-1.
    for hashes in seen:
        for blocks in held.values():
            positions = [i for i, h in enumerate(hashes) if h in blocks]
            assert positions == list(range(len(positions)))

    for text in probes + [t for _, t, _ in adds]:
        c = chain(text)
        want = {n: m for n, blocks in held.items() if (m := _plain_walk(blocks, c.all()))}
        fresh = chain(text)
        assert index.match_lengths(fresh, names) == want
        # Lazy: hashed no further than the furthest probe (2m + 2 blocks for the longest m).
        longest = max(want.values(), default=0)
        assert fresh.num_hashed <= min(c.num_blocks, 2 * longest + 2)
