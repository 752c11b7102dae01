"""Saturation detection: is the pool too busy to take one more request right now?

A detector turns the candidate endpoints' scraped metrics into a *saturation* number, 0.0 for an
idle pool and 1.0 at the set point (llm-d's ``SaturationDetector.Saturation``); the flow
controller dispatches while ``saturation < usage limit`` (1.0 by default) and sheds sheddable
requests when ``saturation >= 1.0``. No endpoints means saturated (1.0).

**The dispatched-since-scrape guard.** Metrics are scraped every 50 ms, so a burst could see the
same idle snapshot many times and overshoot. :class:`DispatchTracker` closes that gap:

* ``on_dispatched(name)`` records the monotonic time of each dispatch to an endpoint;
* a dispatch counts as one more *waiting* request on that endpoint for as long as it is newer
  than the endpoint's last scrape (``Metrics.updated_at``): once a scrape taken after the
  dispatch arrives, the engine's own ``num_requests_waiting``/``running`` include it;
* ``on_completed(name)`` drops the oldest still-uncounted dispatch of that endpoint (a request
  that finished before any scrape saw it must not hold capacity);
* ``pending`` (requests admitted by the controller but not yet given an endpoint) is spread
  over the pool: the legacy detector needs that much free headroom in total, the averaging
  detectors add it to the pool's load.

Invariant: ``recent(name, scraped_at)`` never counts a dispatch twice, and it is 0 for an
endpoint after a scrape newer than all its dispatches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from kvgate.scheduling.types import Endpoint


@runtime_checkable
class SaturationDetector(Protocol):
    """llm-d's saturation-detector extension point (``utilization-detector`` and friends)."""

    def saturation(self, candidates: Sequence[Endpoint], now: float, pending: int = 0) -> float:
        """Pool load: 0.0 idle, >= 1.0 saturated; ``pending`` admitted requests not yet placed."""
        ...

    def is_saturated(self, candidates: Sequence[Endpoint], now: float) -> bool:
        """``saturation(candidates, now) >= 1.0``: sheddable requests are rejected."""
        ...

    def on_dispatched(self, endpoint_name: str) -> None: ...

    def on_completed(self, endpoint_name: str) -> None: ...


class DispatchTracker:
    """Dispatches per endpoint not yet visible in its metrics, and requests in flight.

    ``clock`` must be the clock ``Metrics.updated_at`` is stamped with (``time.monotonic``).
    """

    __slots__ = ("_clock", "_in_flight", "_recent")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}

    def on_dispatched(self, endpoint_name: str) -> None:
        stamps = self._recent.get(endpoint_name)
        if stamps is None:
            stamps = self._recent[endpoint_name] = deque()
        stamps.append(self._clock())
        self._in_flight[endpoint_name] = self._in_flight.get(endpoint_name, 0) + 1

    def on_completed(self, endpoint_name: str) -> None:
        stamps = self._recent.get(endpoint_name)
        if stamps:
            stamps.popleft()
        count = self._in_flight.get(endpoint_name, 0)
        if count > 1:
            self._in_flight[endpoint_name] = count - 1
        else:
            self._in_flight.pop(endpoint_name, None)

    def recent(self, endpoint_name: str, scraped_at: float) -> int:
        """Dispatches to ``endpoint_name`` made after its scrape at ``scraped_at``."""
        stamps = self._recent.get(endpoint_name)
        if not stamps:
            return 0
        while stamps and stamps[0] <= scraped_at:  # the scrape already counts these
            stamps.popleft()
        return len(stamps)

    def in_flight(self, endpoint_name: str) -> int:
        """Dispatched and not yet completed (what the concurrency detector counts)."""
        return self._in_flight.get(endpoint_name, 0)


class TrackedDetector:
    """What every built-in detector shares: a :class:`DispatchTracker` fed by the request
    path, and ``is_saturated`` as ``saturation >= 1``. Subclasses define ``saturation``."""

    tracker: DispatchTracker

    def saturation(self, candidates: Sequence[Endpoint], now: float, pending: int = 0) -> float:
        raise NotImplementedError

    def is_saturated(self, candidates: Sequence[Endpoint], now: float) -> bool:
        return self.saturation(candidates, now) >= 1.0

    def on_dispatched(self, endpoint_name: str) -> None:
        self.tracker.on_dispatched(endpoint_name)

    def on_completed(self, endpoint_name: str) -> None:
        self.tracker.on_completed(endpoint_name)


class ThresholdDetector(TrackedDetector):
    """GIE v1.3's saturation detector (the top-level ``saturationDetector`` thresholds).

    An endpoint has capacity when its metrics are fresh (age <= ``staleness_s``), its waiting
    queue (plus dispatches since its scrape) is < ``queue_depth_threshold`` and its KV-cache
    usage is < ``kv_cache_util_threshold``. Saturation is 1.0 when the pool's free queue slots
    (``threshold - waiting`` summed over endpoints with capacity) do not exceed ``pending``,
    else 0.0; with ``pending == 0`` that is exactly GIE's "no endpoint has capacity".
    """

    type_name = "saturation-detector"  # GIE's built-in detector had no plugin type

    def __init__(
        self,
        queue_depth_threshold: int = 5,
        kv_cache_util_threshold: float = 0.8,
        staleness_s: float = 0.2,
        *,
        tracker: DispatchTracker | None = None,
        name: str = "saturation-detector",
    ) -> None:
        import time

        self.name = name
        self.queue_depth_threshold = queue_depth_threshold
        self.kv_cache_util_threshold = kv_cache_util_threshold
        self.staleness_s = staleness_s
        self.tracker = tracker if tracker is not None else DispatchTracker(time.monotonic)

    def saturation(self, candidates: Sequence[Endpoint], now: float, pending: int = 0) -> float:
        free = 0
        limit = self.queue_depth_threshold
        for endpoint in candidates:
            m = endpoint.metrics
            if m.updated_at <= 0.0 or now - m.updated_at > self.staleness_s:
                continue
            if m.kv_cache_usage_percent >= self.kv_cache_util_threshold:
                continue
            waiting = m.waiting_queue_size + self.tracker.recent(endpoint.name, m.updated_at)
            if waiting < limit:
                free += limit - waiting
                if free > pending:
                    return 0.0
        return 1.0
