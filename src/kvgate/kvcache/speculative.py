"""Predicted blocks: what an endpoint will hold once the requests routed to it have run.

The precise index learns a request's blocks only when the engine reports storing them. Until
then -- a few milliseconds on an idle replica, as long as the request waits in the queue on a
saturated one -- it does not know that the chosen endpoint is about to compute this prefix,
and another request with the same prefix is routed as if nobody had it: a second copy of
the prefix is computed elsewhere, and under load the copies evict each other. llm-d's
``speculativeIndexing`` closes the gap with entries that expire after ``speculativeTTL``.
kvgate ties them to the request instead of the clock alone:

* :meth:`SpeculativeBlocks.add` when a request is routed (PreRequest): its block keys count
  as held by the chosen endpoint for as long as the request is in flight, however long it
  queues;
* :meth:`SpeculativeBlocks.finish` when its response completes (or fails): they stay
  ``ttl_s`` longer, time for the engine's BlockStored events to reach the index, then go;
* :meth:`SpeculativeBlocks.held`: the longest leading run of a request's keys predicted on
  an endpoint.

Invariant: each endpoint's predicted set is prefix-closed over chained request keys. A
request's keys are added and retired together, the key of block ``j`` determines blocks
``< j``, so every request that predicts block ``j`` also predicts ``j - 1`` with as long a
life; :meth:`held` therefore binary-searches. Not thread-safe (the scheduler's loop).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["SpeculativeBlocks"]


@dataclass(slots=True)
class _Predicted:
    inflight: dict[int, int] = field(default_factory=dict)  # key -> requests in flight
    recent: dict[int, float] = field(default_factory=dict)  # key -> expiry (clock seconds)


class SpeculativeBlocks:
    """Per endpoint: block keys of requests in flight there, and of those finished lately."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_endpoint: dict[str, _Predicted] = {}
        # (expiry, endpoint, keys) in expiry order: the TTL is fixed, so finish() appends in
        # order and expiring is a pop from the left
        self._expiries: deque[tuple[float, str, Sequence[int]]] = deque()

    def add(self, endpoint: str, keys: Sequence[int]) -> None:
        """A request with these block keys was routed to ``endpoint``."""
        if not keys:
            return
        self._expire()
        inflight = self._by_endpoint.setdefault(endpoint, _Predicted()).inflight
        for key in keys:
            inflight[key] = inflight.get(key, 0) + 1

    def finish(self, endpoint: str, keys: Sequence[int]) -> None:
        """That request's response completed: keep its keys ``ttl_s`` more, then forget them."""
        predicted = self._by_endpoint.get(endpoint)
        if predicted is None or not keys:
            return
        expiry = self._clock() + self.ttl_s
        inflight, recent = predicted.inflight, predicted.recent
        for key in keys:
            count = inflight.get(key, 0) - 1
            if count > 0:
                inflight[key] = count
            else:
                inflight.pop(key, None)
            if recent.get(key, 0.0) < expiry:
                recent[key] = expiry
        self._expiries.append((expiry, endpoint, keys))
        self._expire()

    def held(self, endpoint: str, keys: Sequence[int]) -> int:
        """How many leading ``keys`` are predicted on ``endpoint``."""
        predicted = self._by_endpoint.get(endpoint)
        if predicted is None or not keys:
            return 0
        now = self._clock()
        inflight, recent = predicted.inflight, predicted.recent

        def has(key: int) -> bool:
            return key in inflight or recent.get(key, 0.0) > now

        lo, hi = 0, len(keys)  # keys[:lo] are predicted; keys[hi:] are not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if has(keys[mid - 1]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def drop(self, endpoint: str) -> None:
        """Forget an endpoint (it left the pool)."""
        self._by_endpoint.pop(endpoint, None)

    def num_keys(self, endpoint: str) -> int:
        """Predicted keys on ``endpoint`` (in flight or not yet expired), for tests and metrics."""
        predicted = self._by_endpoint.get(endpoint)
        if predicted is None:
            return 0
        now = self._clock()
        alive = {k for k, expiry in predicted.recent.items() if expiry > now}
        return len(alive | predicted.inflight.keys())

    def _expire(self) -> None:
        now = self._clock()
        queue = self._expiries
        while queue and queue[0][0] <= now:
            expiry, endpoint, keys = queue.popleft()
            predicted = self._by_endpoint.get(endpoint)
            if predicted is None:
                continue
            recent = predicted.recent
            for key in keys:
                if recent.get(key) == expiry:  # not extended by a later request
                    del recent[key]
            if not recent and not predicted.inflight:
                del self._by_endpoint[endpoint]
