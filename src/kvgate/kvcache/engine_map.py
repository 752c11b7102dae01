"""Engine block hash -> request key, compact: a young dict plus frozen sorted numpy segments.

The precise index keeps one translation per engine block hash it has seen. In a dict that
costs about 70 bytes each (a 36-byte int key plus the table slot); frozen into sorted
``uint64`` arrays it costs 16. New translations land in the young dict (fast inserts and
lookups); when it reaches ``young_max`` entries it is frozen into a segment, and segments
are merged size-tiered (the two newest, while the older is at most 4x the newer and the
result stays within ``max_segment``) so that there are only a few (lookups search each,
newest first).

Bounded work per call: the precise index applies events on the gateway's event loop, so no
:meth:`EngineMap.update` may stall it. An update either freezes the young dict (a sort of
``young_max`` entries) or advances the one merge in progress by ``merge_chunk`` entries of
each side: the two sorted runs are merged in key ranges into a new pair of arrays while
lookups keep using the old segments, which the result replaces once complete.

Translations are pure functions of the tokens (the same engine hash always maps to the same
request key), so duplicates across segments are harmless and nothing is ever updated in
place. Trimming drops the oldest entries: the oldest segment first (at most ``max_segment``
at a time). A translation in use is kept young: storing a block again re-adds it, and a
parent looked up with ``get(h, refresh=True)`` is re-added too (a hot prefix that stays
cached is never stored again, but every request that extends it names it as the parent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EngineMap"]

_U64_MAX = (1 << 64) - 1


@dataclass(slots=True)
class _Merge:
    """A merge of two adjacent segments in progress: ``older`` and ``newer`` stay searchable
    in the segment lists until ``out_*[:filled]`` replaces them."""

    older_k: np.ndarray
    older_v: np.ndarray
    newer_k: np.ndarray
    newer_v: np.ndarray
    out_k: np.ndarray
    out_v: np.ndarray
    i: int = 0  # next entry of older
    j: int = 0  # next entry of newer
    filled: int = 0


class EngineMap:
    """See the module docstring. Keys and values are ints in [0, 2**64)."""

    __slots__ = (
        "_keys",
        "_merge",
        "_size",
        "_vals",
        "max_segment",
        "merge_chunk",
        "young",
        "young_max",
    )

    def __init__(
        self, young_max: int = 1 << 16, max_segment: int = 1 << 21, merge_chunk: int = 1 << 16
    ) -> None:
        self.young: dict[int, int] = {}
        self.young_max = young_max
        self.max_segment = max(max_segment, young_max)
        self.merge_chunk = merge_chunk
        self._merge: _Merge | None = None
        self._keys: list[np.ndarray] = []  # sorted uint64, oldest segment first
        self._vals: list[np.ndarray] = []
        self._size = 0  # entries in segments

    def __len__(self) -> int:
        return len(self.young) + self._size

    @property
    def num_segments(self) -> int:
        return len(self._keys)

    def get(self, h: int, *, refresh: bool = False) -> int | None:
        """The translation of ``h``, or None. ``refresh``: a translation found in a segment is
        put back in the young dict, so that trimming (oldest first) keeps what is in use."""
        young = self.young
        value = young.get(h)
        if value is not None:
            if refresh:  # to the young end (the dict trims in insertion order)
                del young[h]
                young[h] = value
            return value
        if not self._keys or not 0 <= h <= _U64_MAX:
            return None
        q = np.uint64(h)
        for keys, vals in zip(reversed(self._keys), reversed(self._vals), strict=True):
            i = int(keys.searchsorted(q))
            if i < len(keys) and keys[i] == q:
                value = int(vals[i])
                if refresh:
                    young[h] = value
                return value
        return None

    def get_many(self, hashes: Sequence[int]) -> list[int | None]:
        out: list[int | None] = list(map(self.young.get, hashes))
        if not self._keys or None not in out:
            return out
        missing = [i for i, v in enumerate(out) if v is None and 0 <= hashes[i] <= _U64_MAX]
        if not missing:
            return out
        if len(missing) < 4:
            for i in missing:
                out[i] = self.get(hashes[i])
            return out
        q = np.array([hashes[i] for i in missing], dtype=np.uint64)
        found = np.zeros(len(q), dtype=bool)
        result = np.zeros(len(q), dtype=np.uint64)
        for keys, vals in zip(reversed(self._keys), reversed(self._vals), strict=True):
            idx = keys.searchsorted(q)
            np.minimum(idx, len(keys) - 1, out=idx)
            hit = (keys[idx] == q) & ~found
            result[hit] = vals[idx[hit]]
            found |= hit
        for j, i in enumerate(missing):
            if found[j]:
                out[i] = int(result[j])
        return out

    def update(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Add translations; then freeze the young dict if full, else advance a merge."""
        self.young.update(pairs)
        if len(self.young) >= self.young_max:
            self.freeze()
        else:
            self.merge_step()

    def freeze(self) -> None:
        """Turn the young dict into a (sorted) segment; merging is left to later calls."""
        young = self.young
        n = len(young)
        if not n:
            return
        keys = np.fromiter(young.keys(), dtype=np.uint64, count=n)
        vals = np.fromiter(young.values(), dtype=np.uint64, count=n)
        self.young = {}
        order = np.argsort(keys, kind="stable")
        self._keys.append(keys[order])
        self._vals.append(vals[order])
        self._size += n

    def merge_step(self) -> bool:
        """Advance the merge in progress, or start one if size-tiering calls for it; True if
        there was work (one chunk: at most ``merge_chunk`` entries of each segment)."""
        merge = self._merge
        if merge is None:
            segments = self._keys
            if len(segments) < 2:
                return False
            older, newer = len(segments[-2]), len(segments[-1])
            if older > 4 * newer or older + newer > self.max_segment:
                return False
            merge = self._merge = _Merge(
                segments[-2],
                self._vals[-2],
                segments[-1],
                self._vals[-1],
                np.empty(older + newer, dtype=np.uint64),
                np.empty(older + newer, dtype=np.uint64),
            )
        a, b = merge.older_k, merge.newer_k
        i, j, chunk = merge.i, merge.j, self.merge_chunk
        # Split both runs at one key so that equal keys (duplicates) meet in the same chunk.
        bounds = []
        if i + chunk < len(a):
            bounds.append(a[i + chunk - 1])
        if j + chunk < len(b):
            bounds.append(b[j + chunk - 1])
        if bounds:
            split = min(bounds)
            i_end = int(a.searchsorted(split, side="right"))
            j_end = int(b.searchsorted(split, side="right"))
        else:
            i_end, j_end = len(a), len(b)
        keys = np.concatenate((a[i:i_end], b[j:j_end]))
        vals = np.concatenate((merge.older_v[i:i_end], merge.newer_v[j:j_end]))
        order = np.argsort(keys, kind="stable")  # two sorted runs: timsort merges them
        keys, vals = keys[order], vals[order]
        if len(keys) > 1:  # drop duplicate translations (same key, same value)
            keep = np.empty(len(keys), dtype=bool)
            keep[0] = True
            np.not_equal(keys[1:], keys[:-1], out=keep[1:])
            keys, vals = keys[keep], vals[keep]
        start = merge.filled
        merge.out_k[start : start + len(keys)] = keys
        merge.out_v[start : start + len(keys)] = vals
        merge.i, merge.j, merge.filled = i_end, j_end, start + len(keys)
        if i_end == len(a) and j_end == len(b):
            self._finish_merge(merge)
        return True

    def _finish_merge(self, merge: _Merge) -> None:
        at = next(n for n, keys in enumerate(self._keys) if keys is merge.older_k)
        filled = merge.filled
        self._keys[at : at + 2] = [merge.out_k[:filled]]
        self._vals[at : at + 2] = [merge.out_v[:filled]]
        self._size -= len(merge.older_k) + len(merge.newer_k) - filled
        self._merge = None

    def compact(self) -> None:
        """Freeze the young dict and do every pending merge now (tests, benchmarks)."""
        self.freeze()
        while self.merge_step():
            pass

    def trim(self, max_entries: int) -> int:
        """Drop the oldest entries until at most ``max_entries`` remain; returns how many."""
        dropped = 0
        while len(self) > max_entries and self._keys:
            if self._merge is not None and self._merge.older_k is self._keys[0]:
                self._merge = None  # its older half is dropped: abandon it
            dropped += len(self._keys[0])
            self._size -= len(self._keys[0])
            del self._keys[0], self._vals[0]
        while len(self) > max_entries and self.young:
            self.young.pop(next(iter(self.young)))
            dropped += 1
        return dropped
