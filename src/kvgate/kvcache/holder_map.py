"""Request key -> holder bit field, compact: a young dict plus frozen sorted numpy segments.

The precise index keeps one holder bit field (``T`` bits per endpoint slot) per request key.
In a dict that costs about 75 bytes an entry at 10 M entries (a 40-byte int key plus the
table slot); frozen into numpy it costs 24 (key, one mask word, age). New and recently
changed entries live in the young dict (Python-speed inserts and lookups); when it reaches
``young_max`` entries it is frozen into a segment sorted by key, and segments are merged
size-tiered (as :mod:`kvgate.kvcache.engine_map` does), so lookups search only a few.

Invariants:

- A key is live in one place only: the young dict, or one segment row whose age is not
  ``_DEAD``. A removed row is a tombstone (mask 0, age ``_DEAD``), dropped when segments merge
  or compact.
- Age order is the index's LRU order: every frozen row is older than every young entry;
  frozen rows are ordered by ``seqs`` (given in young-dict order at freeze time), young
  entries by dict order. Giving an entry a new holder bit moves it to the young end
  (:meth:`HolderMap.bump`); clearing bits leaves it where it is (:meth:`HolderMap.set`).
- Masks are Python ints at the API; a segment stores ``words`` uint64 columns, enough for
  the widest mask it was frozen with (clearing bits never needs more).

Handles returned by :meth:`HolderMap.lookup` stay valid until :meth:`HolderMap.maybe_freeze`
or :meth:`HolderMap.evict_oldest` (both may merge or compact segments).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np

__all__ = ["FrozenRow", "HolderMap"]

_U64 = (1 << 64) - 1
_DEAD = np.iinfo(np.int64).max
_FILTER_BITS_PER_KEY = 8
_FILTER_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits are mixed
_THREE = np.uint64(3)
_SEVEN = np.uint64(7)


class _Segment:
    """Rows sorted by key: ``keys`` uint64, ``masks`` (n, words) uint64, ``seqs`` int64 age.

    ``filter``: one bit per ``_FILTER_BITS_PER_KEY`` slots set for each key (a one-hash Bloom
    filter, ~12 % false positives), so a lookup binary-searches only the segments that may
    hold a key: each search is ~20 cache misses, the filter one.
    """

    __slots__ = ("filter", "filter_shift", "keys", "live", "masks", "seqs")

    def __init__(self, keys: np.ndarray, masks: np.ndarray, seqs: np.ndarray) -> None:
        self.keys = keys
        self.masks = masks
        self.seqs = seqs
        self.live = int(np.count_nonzero(seqs != _DEAD))
        log_bits = max(6, (len(keys) * _FILTER_BITS_PER_KEY - 1).bit_length())
        self.filter_shift = np.uint64(64 - log_bits)
        present = np.zeros(1 << log_bits, dtype=bool)
        present[self.filter_slots(keys)] = True
        self.filter = np.packbits(present, bitorder="little")

    def filter_slots(self, keys: np.ndarray) -> np.ndarray:
        return (keys * _FILTER_MULTIPLIER) >> self.filter_shift

    def may_hold(self, keys: np.ndarray) -> np.ndarray:
        slots = self.filter_slots(keys)
        return (self.filter[slots >> _THREE] >> (slots & _SEVEN).astype(np.uint8)) & 1 != 0  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def words(self) -> int:
        return int(self.masks.shape[1])

    def kill(self, rows: np.ndarray) -> None:
        """Tombstone ``rows`` (all live)."""
        self.masks[rows] = 0
        self.seqs[rows] = _DEAD
        self.live -= len(rows)

    def compacted(self) -> _Segment:
        keep = self.seqs != _DEAD
        return _Segment(self.keys[keep], self.masks[keep], self.seqs[keep])


#: Where a frozen entry lives: (segment, row).
FrozenRow = tuple[_Segment, int]


def _words_of(mask: int, words: int) -> list[int]:
    return [(mask >> (64 * w)) & _U64 for w in range(words)]


def _rows_to_ints(masks: np.ndarray) -> list[int]:
    """(k, words) uint64 rows -> Python ints."""
    if masks.shape[1] == 1:
        return masks[:, 0].tolist()  # type: ignore[no-any-return]
    columns = [masks[:, w].tolist() for w in range(masks.shape[1])]
    return [sum(v << (64 * w) for w, v in enumerate(row)) for row in zip(*columns, strict=True)]


def _widen(masks: np.ndarray, words: int) -> np.ndarray:
    if masks.shape[1] == words:
        return masks
    out = np.zeros((len(masks), words), dtype=np.uint64)
    out[:, : masks.shape[1]] = masks
    return out


class HolderMap:
    """See the module docstring. Keys are ints in [0, 2**64); masks are non-zero ints."""

    __slots__ = ("_frozen_live", "_next_seq", "_segments", "young", "young_max")

    def __init__(self, young_max: int = 1 << 18) -> None:
        if young_max < 1:
            raise ValueError(f"young_max must be >= 1, got {young_max}")
        self.young: dict[int, int] = {}
        self.young_max = young_max
        self._segments: list[_Segment] = []  # oldest first
        self._next_seq = 0
        self._frozen_live = 0

    def __len__(self) -> int:
        return len(self.young) + self._frozen_live

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    @property
    def num_frozen(self) -> int:
        return self._frozen_live

    # --- lookups --------------------------------------------------------------------------

    def get_many(self, keys: Sequence[int]) -> list[int | None]:
        """The mask of each key (None: absent)."""
        out: list[int | None] = list(map(self.young.get, keys))
        if self._frozen_live and None in out:
            self._find_frozen(keys, out, None)
        return out

    def lookup(self, keys: Sequence[int]) -> tuple[list[int | None], dict[int, FrozenRow]]:
        """Masks as :meth:`get_many`, and where each frozen one lives (for set/bump/delete)."""
        out: list[int | None] = list(map(self.young.get, keys))
        where: dict[int, FrozenRow] = {}
        if self._frozen_live and None in out:
            self._find_frozen(keys, out, where)
        return out, where

    def _find_frozen(
        self, keys: Sequence[int], out: list[int | None], where: dict[int, FrozenRow] | None
    ) -> None:
        n = len(keys)
        if out.count(None) == n:
            missing = None  # all of them: the common case of a lookup in frozen blocks
            query = np.array(keys, dtype=np.uint64)
        else:
            missing = [i for i, v in enumerate(out) if v is None]
            query = np.array([keys[i] for i in missing], dtype=np.uint64)
        # Sorted queries make searchsorted walk each segment in order (~4x fewer cache misses);
        # newest segment first, each searching only the keys not found yet.
        order = np.argsort(query)
        pending = query[order]
        slots = order  # position in ``query`` of each pending key
        found_at: list[np.ndarray] = []
        found_masks: list[int] = []
        for seg in reversed(self._segments):
            if not len(pending):
                break
            if not seg.live:
                continue
            maybe = np.flatnonzero(seg.may_hold(pending))
            if not len(maybe):
                continue
            candidates = pending[maybe]
            idx = seg.keys.searchsorted(candidates)
            np.minimum(idx, len(seg) - 1, out=idx)
            hit_c = (seg.keys[idx] == candidates) & (seg.seqs[idx] != _DEAD)
            if not hit_c.any():
                continue
            rows = idx[hit_c]
            hit = np.zeros(len(pending), dtype=bool)
            hit[maybe[hit_c]] = True
            hit_slots = slots[hit]
            found_at.append(hit_slots)
            found_masks.extend(_rows_to_ints(seg.masks[rows]))
            if where is not None:
                for j, row in zip(hit_slots.tolist(), rows.tolist(), strict=True):
                    i = j if missing is None else missing[j]
                    where[keys[i]] = (seg, row)
            miss = ~hit
            pending = pending[miss]
            slots = slots[miss]
        if not found_masks:
            return
        positions = np.concatenate(found_at).tolist()
        if missing is None:
            for j, mask in zip(positions, found_masks, strict=True):
                out[j] = mask
        else:
            for j, mask in zip(positions, found_masks, strict=True):
                out[missing[j]] = mask

    # --- updates (no freezing or merging inside: handles stay valid) -------------------------

    def set(self, key: int, row: FrozenRow | None, mask: int) -> None:
        """Replace a live entry's mask by a subset of its bits, keeping its age; 0 deletes it."""
        if row is None:
            if mask:
                self.young[key] = mask
            else:
                del self.young[key]
            return
        seg, i = row
        if mask:
            seg.masks[i] = _words_of(mask, seg.words)
        elif seg.seqs[i] != _DEAD:
            seg.kill(np.array([i]))
            self._frozen_live -= 1

    def bump(self, key: int, row: FrozenRow | None, mask: int) -> None:
        """Set ``key``'s mask and make it the youngest entry (storing a block again)."""
        if row is not None:
            seg, i = row
            if seg.seqs[i] != _DEAD:
                seg.kill(np.array([i]))
                self._frozen_live -= 1
        else:
            self.young.pop(key, None)
        self.young[key] = mask

    # --- freezing, eviction, sweeping -------------------------------------------------------

    def maybe_freeze(self) -> None:
        if len(self.young) >= self.young_max:
            self.freeze()

    def freeze(self) -> None:
        """Turn the young dict into a segment (and merge segments of similar size)."""
        young = self.young
        n = len(young)
        if not n:
            return
        keys = np.fromiter(young.keys(), dtype=np.uint64, count=n)
        values = list(young.values())
        words = max(1, (max(map(int.bit_length, values)) + 63) // 64)
        if words == 1:
            masks = np.fromiter(values, dtype=np.uint64, count=n).reshape(n, 1)
        else:
            masks = np.array([_words_of(m, words) for m in values], dtype=np.uint64)
        seqs = np.arange(self._next_seq, self._next_seq + n, dtype=np.int64)
        self._next_seq += n
        self.young = {}
        order = np.argsort(keys, kind="stable")
        self._segments.append(_Segment(keys[order], masks[order], seqs[order]))
        self._frozen_live += n
        # size-tiered: merge the two newest while the older is at most 4x the newer
        segs = self._segments
        while len(segs) >= 2 and segs[-2].live <= 4 * segs[-1].live:
            newer, older = segs.pop(), segs.pop()
            segs.append(_merge(older, newer))

    def evict_oldest(self, count: int) -> list[int]:
        """Remove the ``count`` oldest entries; returns their masks."""
        victims: list[int] = []
        take = min(count, self._frozen_live)
        if take:
            segs = [s for s in self._segments if s.live]
            if take < self._frozen_live:
                ages = np.concatenate([s.seqs for s in segs])
                threshold = int(np.partition(ages, take - 1)[take - 1])
            else:
                threshold = _DEAD - 1
            for seg in segs:
                rows = np.flatnonzero(seg.seqs <= threshold)
                if len(rows):
                    victims.extend(_rows_to_ints(seg.masks[rows]))
                    seg.kill(rows)
            self._frozen_live -= take
            self._compact()
        rest = count - take
        if rest > 0:
            young = self.young
            for key in list(islice(iter(young), rest)):
                victims.append(young.pop(key))
        return victims

    def sweep(self, dead: int) -> None:
        """Clear the bits ``dead`` from every entry, deleting entries left empty."""
        young = self.young
        empty = []
        for key, mask in young.items():
            if mask & dead:
                mask &= ~dead
                if mask:
                    young[key] = mask  # same key: keeps its place
                else:
                    empty.append(key)
        for key in empty:
            del young[key]
        for seg in self._segments:
            if not seg.live:
                continue
            dead_words = np.array(_words_of(dead, seg.words), dtype=np.uint64)
            touched = (seg.masks & dead_words).any(axis=1)
            if not touched.any():
                continue
            seg.masks &= ~dead_words
            emptied = np.flatnonzero(touched & ~seg.masks.any(axis=1))
            if len(emptied):
                seg.kill(emptied)
                self._frozen_live -= len(emptied)
        self._compact()

    def _compact(self) -> None:
        """Drop empty segments; rewrite those at most half live (tombstones cost memory)."""
        self._segments = [
            s if 2 * s.live > len(s) else s.compacted() for s in self._segments if s.live
        ]


def _merge(older: _Segment, newer: _Segment) -> _Segment:
    """One segment of both's live rows (a key is live in one of them at most)."""
    words = max(older.words, newer.words)
    parts = [s if s.live == len(s) else s.compacted() for s in (older, newer)]
    keys = np.concatenate([p.keys for p in parts])
    masks = np.concatenate([_widen(p.masks, words) for p in parts])
    seqs = np.concatenate([p.seqs for p in parts])
    order = np.argsort(keys, kind="stable")  # two sorted runs: timsort merges them in O(n)
    return _Segment(keys[order], masks[order], seqs[order])
