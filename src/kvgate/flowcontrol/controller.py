"""The flow controller: requests wait here, not in vLLM, while the pool is saturated.

:meth:`FlowController.admit` is the one entry point (the request-control layer awaits it before
scheduling). Invariants the controller enforces so the policies can stay small:

* **Order.** Dispatch takes the highest-priority non-empty band, then the band's fairness
  policy picks a flow, then the flow's ordering policy picks the request.
* **One at a time.** A request leaves the queue only while ``saturation(pending) < usage
  limit``, re-evaluated after every dispatch. ``pending`` counts requests admitted but not yet
  reported through :meth:`dispatched`, so a burst released between two metric scrapes is
  charged against the pool at once (with the detector's dispatched-since-scrape counts; see
  kvgate.flowcontrol.saturation). An admitted request never reported (its scheduling failed)
  stops counting after ``pending_timeout_s``.
* **Fast path.** With nothing queued and the pool below its limit, ``admit`` returns 0.0 without
  awaiting anything.
* **Capacity.** A request that would push its band or the whole controller past a
  ``maxRequests``/``maxBytes`` limit (counted over queued requests, as llm-d) is rejected at once.
* **Deadlines.** A queued request is answered by its TTL: a per-request ``call_at`` timer (set a
  small margin early) rejects it with ``ttl_expired``; a periodic tick (every ``tick_s`` while
  anything waits) re-checks saturation in case no scrape notification comes.
* **Accounting.** Every admit ends in exactly one outcome, counted once: Dispatched,
  RejectedCapacity, Shed, EvictedTTL, EvictedContextCancelled or EvictedShutdown.
* **Eviction** (``enableEviction``): a dispatch cycle stopped by saturation lets
  :class:`kvgate.flowcontrol.eviction.InFlightEviction` end dispatched sheddable requests for a
  blocked higher band; request control tracks each dispatched request there (``eviction``).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import prometheus_client

from kvgate.errors import FlowRejected
from kvgate.flowcontrol.config import DEFAULT_FAIRNESS_ID, FlowControlConfig
from kvgate.flowcontrol.eviction import InFlightEviction
from kvgate.flowcontrol.metrics import FlowMetrics
from kvgate.flowcontrol.policies.edf import EDFOrdering
from kvgate.flowcontrol.policies.fcfs import FCFSOrdering
from kvgate.flowcontrol.policies.global_strict import GlobalStrictFairness
from kvgate.flowcontrol.policies.round_robin import RoundRobinFairness
from kvgate.flowcontrol.queues import Band, FairnessPolicy, OrderingPolicy, QueuedItem
from kvgate.flowcontrol.saturation import SaturationDetector
from kvgate.scheduling.types import Endpoint

#: A per-band usage-limit policy: (saturation, priorities highest first) -> one ceiling each.
BandLimits = Callable[[float, Sequence[int]], Sequence[float]]

_ORDERING: dict[str, Callable[[], OrderingPolicy]] = {
    "fcfs-ordering-policy": FCFSOrdering,
    "edf-ordering-policy": EDFOrdering,
}
_FAIRNESS: dict[str, Callable[[], FairnessPolicy]] = {
    "global-strict-fairness-policy": GlobalStrictFairness,
    "round-robin-fairness-policy": RoundRobinFairness,
}


@dataclass(slots=True)
class FlowItem:
    """One request as flow control sees it."""

    request_id: str
    fairness_id: str  # "" -> "default-flow", llm-d's default fairness id
    priority: int  # from the InferenceObjective, 0 when none; < 0 is sheddable
    byte_size: int  # request body bytes
    model: str
    ttl_s: float | None = None  # None -> the configured default TTL; 0 = no TTL


def _rejected(reason: str, message: str, *, pool_empty: bool = False) -> FlowRejected:
    """llm-d-router's answers (requestcontrol/admission.go translateFlowControlOutcome)."""
    if reason == "capacity":
        return FlowRejected(
            reason,
            f"request rejected pre-queue: {message}",
            status=429,
            code="rate_limit_exceeded",
            dropped_reason="rejected-saturated",
            retry_after_s=1.0,
        )
    if reason == "shed":
        return FlowRejected(
            reason,
            "system saturated, sheddable request dropped",
            status=429,
            code="rate_limit_exceeded",
            dropped_reason="rejected-saturated",
            retry_after_s=1.0,
        )
    if reason == "evicted":  # llm-d's ImmediateResponse for an evicted request: no Retry-After
        return FlowRejected(
            reason,
            "request evicted by flow control",
            status=429,
            code="rate_limit_exceeded",
            dropped_reason="evicted",
        )
    if reason == "ttl_expired":
        if pool_empty:
            return FlowRejected(
                reason,
                "request timed out in queue and no endpoints are available: "
                "request evicted from queue: request TTL expired",
                status=503,
                code="no_endpoints",
                dropped_reason="rejected-no-endpoints",
                retry_after_s=1.0,
            )
        return FlowRejected(
            reason,
            "request timed out in queue: request evicted from queue: request TTL expired",
            status=429,
            code="rate_limit_exceeded",
            dropped_reason="rejected-ttl-expired",
            retry_after_s=1.0,
        )
    return FlowRejected(
        "shutdown",
        "flow controller shutting down: request evicted from queue: flow controller is not running",
        status=503,
        code="shutting_down",
        dropped_reason="rejected-shutting-down",
        retry_after_s=1.0,
    )


def evicted() -> FlowRejected:
    """What a request ended by in-flight eviction answers (llm-d: 429, ``evicted``)."""
    return _rejected("evicted", "")


class FlowController:
    """Priority bands, fair flows and ordered queues in front of the scheduler (see module)."""

    def __init__(
        self,
        config: FlowControlConfig,
        detector: SaturationDetector,
        candidates: Callable[[], Sequence[Endpoint]],
        *,
        registry: prometheus_client.CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        usage_limit: float = 1.0,
        pool_name: str = "",
        band_limits: BandLimits | None = None,
        fairness: Mapping[str, FairnessPolicy] | None = None,
        tick_s: float = 0.005,
        ttl_margin_s: float = 0.01,
        pending_timeout_s: float = 1.0,
    ) -> None:
        self.config = config
        self.detector = detector
        self._candidates = candidates
        self._clock = clock
        self.usage_limit = usage_limit
        # a per-band usage-limit policy (soft-reflective-ceiling-policy); None: usage_limit only
        self._band_limits = band_limits
        # fairness policies built by the caller, by type (program-aware-fairness shares the
        # scheduler's instance); the rest are built per band from _FAIRNESS
        self._fairness = dict(fairness or {})
        self.tick_s = tick_s
        self.ttl_margin_s = ttl_margin_s
        self.pending_timeout_s = pending_timeout_s
        self.metrics = FlowMetrics(registry, pool_name)
        self._bands: dict[int, Band] = {}
        self._priorities: list[int] = []  # ascending; dispatch walks it from the end
        self._size = 0
        self._byte_size = 0
        self._seq = 0
        self._pending: deque[float] = deque()  # admit times of requests not yet dispatched()
        self._tick: asyncio.TimerHandle | None = None
        self._stopped = False
        self._saturation = 0.0
        #: in-flight eviction (``enableEviction``); None when off
        self.eviction: InFlightEviction | None = (
            InFlightEviction(registry=registry, pool=pool_name, clock=clock)
            if config.enable_eviction
            else None
        )

    # ---- the request path --------------------------------------------------------------

    async def admit(self, item: FlowItem) -> float:
        """Wait until ``item`` may be scheduled; returns the seconds waited.

        Raises :class:`FlowRejected` (capacity, shed, ttl_expired, shutdown); re-raises
        ``CancelledError`` after removing the item when the caller is cancelled.
        """
        if self.try_admit(item):
            return 0.0
        return await self.wait(item)

    def try_admit(self, item: FlowItem) -> bool:
        """The synchronous part of :meth:`admit`: True when ``item`` is dispatched now (the
        pool has room and nothing waits), False when it must queue (then call :meth:`wait`);
        raises :class:`FlowRejected` when it is shed or over capacity. A front door that
        cannot await on every request (the ext_proc stream) uses it to wait only when it must.
        """
        if self._stopped:
            self.metrics.outcome(item, "RejectedOther", 0.0)
            raise _rejected("shutdown", "")
        if not item.fairness_id:
            item.fairness_id = DEFAULT_FAIRNESS_ID
        now = self._clock()
        candidates = self._candidates()
        pending = self._pending_count(now)
        saturation = self.detector.saturation(candidates, now, pending)
        self._set_saturation(saturation)
        if item.priority < 0 and self.detector.saturation(candidates, now) >= 1.0:
            self.metrics.outcome(item, "Shed", 0.0)
            raise _rejected("shed", "")
        band = self._band(item.priority)
        if not self._has_capacity(band, item.byte_size):
            self.metrics.outcome(item, "RejectedCapacity", 0.0)
            raise _rejected("capacity", "queue at capacity")
        if (
            self._size == 0
            and saturation < self.usage_limit
            and (self._band_limits is None or self._band_open(item.priority, saturation))
        ):
            self._pending.append(now)
            self.metrics.outcome(item, "Dispatched", 0.0)
            return True
        return False

    async def wait(self, item: FlowItem) -> float:
        """Queue ``item`` (after :meth:`try_admit` said False) until it is dispatched."""
        band = self._band(item.priority)
        return await self._wait(item, band, self._clock(), pool_empty=not self._candidates())

    def dispatched(self, endpoint_name: str, *, retry: bool = False) -> None:
        """Scheduling sent an admitted request to ``endpoint_name``; ``retry``: a later
        attempt of a request already reported (it is in flight again, not newly admitted)."""
        if self._pending and not retry:
            self._pending.popleft()
        self.detector.on_dispatched(endpoint_name)

    def completed(self, endpoint_name: str) -> None:
        """A request on ``endpoint_name`` ended: capacity may have freed."""
        self.detector.on_completed(endpoint_name)
        if self._size:
            self._dispatch()

    def metrics_refreshed(self) -> None:
        """Fresh metrics arrived: re-check saturation."""
        if self._size:
            self._dispatch()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        """Reject everything still queued with reason ``shutdown``; later admits too."""
        self._stopped = True
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for priority in self._priorities:
            band = self._bands[priority]
            for queue in list(band.flows.values()):  # _remove drops emptied flows
                while (queued := queue.pop()) is not None:
                    self._remove(band, queued)
                    self._finish(queued, "EvictedOther", _rejected("shutdown", ""))

    def snapshot(self) -> dict[str, Any]:
        """Queue sizes per band and flow, and the saturation state (for /dashboard, tests)."""
        return {
            "queued": self._size,
            "queued_bytes": self._byte_size,
            "pending": len(self._pending),
            "saturation": self._saturation,
            "saturated": self._saturation >= self.usage_limit,
            "bands": [
                {
                    "priority": p,
                    "queued": self._bands[p].size,
                    "queued_bytes": self._bands[p].byte_size,
                    "flows": {fid: q.size for fid, q in self._bands[p].flows.items() if q.size},
                }
                for p in reversed(self._priorities)
            ],
        }

    # ---- internals ---------------------------------------------------------------------

    async def _wait(self, item: FlowItem, band: Band, now: float, *, pool_empty: bool) -> float:
        loop = asyncio.get_running_loop()
        ttl = item.ttl_s
        if ttl is None:
            ttl = self.config.ttl_s(pool_empty=pool_empty, band=band.config)
        self._seq += 1
        queued = QueuedItem(
            item, self._seq, now, now + ttl if ttl > 0 else float("inf"), loop.create_future()
        )
        band.flow(item.fairness_id).push(queued)
        band.size += 1
        band.byte_size += item.byte_size
        self._size += 1
        self._byte_size += item.byte_size
        self.metrics.queued(item, +1)
        if ttl > 0:
            queued.timer = loop.call_later(max(0.0, ttl - self.ttl_margin_s), self._expire, queued)
        self._ensure_tick(loop)
        self._dispatch()
        try:
            return await queued.future
        except asyncio.CancelledError:
            if queued.waiting:
                self._remove(band, queued)
                self._finish(queued, "EvictedContextCancelled", None)
            raise

    def _dispatch(self) -> None:
        """Release queued requests one at a time while the pool is below its limit."""
        while self._size:
            now = self._clock()
            candidates = self._candidates()
            saturation = self.detector.saturation(candidates, now, self._pending_count(now))
            self._set_saturation(saturation)
            if saturation >= self.usage_limit:
                if self.eviction is not None:
                    self._reclaim(saturation)
                return
            queued = self._next(saturation)
            if queued is None:  # a band's usage limit holds it (sizes say something waits)
                if self.eviction is not None:
                    self._reclaim(saturation)
                return
            band = self._bands[queued.item.priority]
            self._remove(band, queued)
            self._pending.append(now)
            self._finish(queued, "Dispatched", None, result=now - queued.enqueued_at)

    def _next(self, saturation: float) -> QueuedItem | None:
        limits = self._band_limits
        ceilings = limits(saturation, self._priorities[::-1]) if limits is not None else None
        for rank, priority in enumerate(reversed(self._priorities)):
            if ceilings is not None and saturation >= ceilings[rank]:
                return None  # llm-d stops the cycle at the first held band (no inversion)
            band = self._bands[priority]
            if not band.size:
                continue
            flow = band.fairness.pick(band)
            if flow is not None:
                return flow.pop()
        return None

    def _reclaim(self, saturation: float) -> None:
        """Dispatch stopped at ``saturation``: let eviction free room for a blocked band."""
        assert self.eviction is not None
        ranked = self._priorities[::-1]
        limits = self._band_limits
        ceilings = (
            limits(saturation, ranked) if limits is not None else [self.usage_limit] * len(ranked)
        )
        bands = [(p, c, self._bands[p].size > 0) for p, c in zip(ranked, ceilings, strict=True)]
        self.eviction.reclaim(saturation, bands)

    def _band_open(self, priority: int, saturation: float) -> bool:
        """Whether a dispatch cycle would reach ``priority``'s band: no band ranked at or
        above it is held by its usage limit (``_band_limits`` is set)."""
        assert self._band_limits is not None
        ranked = self._priorities[::-1]
        ceilings = self._band_limits(saturation, ranked)
        return all(saturation < c for c in ceilings[: ranked.index(priority) + 1])

    def _expire(self, queued: QueuedItem) -> None:
        if not queued.waiting:
            return
        band = self._bands[queued.item.priority]
        self._remove(band, queued)
        self._finish(
            queued, "EvictedTTL", _rejected("ttl_expired", "", pool_empty=not self._candidates())
        )

    def _on_tick(self) -> None:
        self._tick = None
        if self._size:
            self._dispatch()
            self._ensure_tick(asyncio.get_running_loop())

    def _ensure_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._tick is None and self._size and not self._stopped:
            self._tick = loop.call_later(self.tick_s, self._on_tick)

    def _remove(self, band: Band, queued: QueuedItem) -> None:
        """Take ``queued`` out of every count (its heap entry is dropped lazily)."""
        queued.waiting = False
        if queued.timer is not None:
            queued.timer.cancel()
        flow = band.flows[queued.item.fairness_id]
        size = queued.item.byte_size
        flow.size -= 1
        flow.byte_size -= size
        band.size -= 1
        band.byte_size -= size
        self._size -= 1
        self._byte_size -= size
        if flow.size == 0:
            del band.flows[queued.item.fairness_id]
        self.metrics.queued(queued.item, -1)

    def _finish(
        self, queued: QueuedItem, outcome: str, error: FlowRejected | None, result: float = 0.0
    ) -> None:
        waited = self._clock() - queued.enqueued_at
        self.metrics.outcome(queued.item, outcome, waited)
        if queued.future.done():
            return
        if error is not None:
            queued.future.set_exception(error)
        elif outcome == "Dispatched":
            queued.future.set_result(result)
        else:
            queued.future.cancel()

    def _band(self, priority: int) -> Band:
        band = self._bands.get(priority)
        if band is None:
            config = self.config.band(priority)
            fairness = self._fairness.get(config.fairness_policy)
            if fairness is None:
                fairness = _FAIRNESS[config.fairness_policy]()
            band = Band(config, fairness, _ORDERING[config.ordering_policy]())
            self._bands[priority] = band
            bisect.insort(self._priorities, priority)
        return band

    def _has_capacity(self, band: Band, byte_size: int) -> bool:
        cfg = self.config
        if cfg.max_requests and self._size + 1 > cfg.max_requests:
            return False
        if cfg.max_bytes and self._byte_size + byte_size > cfg.max_bytes:
            return False
        if band.size + 1 > band.config.max_requests:
            return False
        return band.byte_size + byte_size <= band.config.max_bytes

    def _pending_count(self, now: float) -> int:
        pending = self._pending
        while pending and now - pending[0] > self.pending_timeout_s:
            pending.popleft()  # never reported: scheduling failed or the caller went away
        return len(pending)

    def _set_saturation(self, saturation: float) -> None:
        if saturation != self._saturation:
            self._saturation = saturation
            self.metrics.saturation(saturation)
