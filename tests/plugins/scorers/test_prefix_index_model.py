"""The approximate prefix index against a plain reference model (OrderedDict LRU per endpoint,
block-by-block consecutive match), under random add/remove/match sequences."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.plugins.scorers.prefix_cache_scorer import ApproxPrefixIndex, PrefixChain

BLOCK = 2
ALPHABET = "ab"  # few distinct blocks, so chains share prefixes and hit often


def _reference_add(lru: OrderedDict[int, None], hashes: list[int], capacity: int) -> None:
    for h in hashes:  # GIE adds one hash at a time, evicting as it goes
        lru.pop(h, None)
        lru[h] = None
        while len(lru) > capacity:
            lru.popitem(last=False)
    while len(lru) > capacity:  # kvgate applies the endpoint's current capacity on every add
        lru.popitem(last=False)


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
            want = {}
            for n, lru in model.items():
                m = 0
                while m < len(hashes) and hashes[m] in lru:
                    m += 1
                if m:
                    want[n] = m
            assert got == want
    for n in names:
        assert index.num_blocks(n) == len(model.get(n, ()))
