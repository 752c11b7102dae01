"""In-flight eviction (``flowControl.enableEviction``): end dispatched sheddable requests so
that a higher band blocked by saturation can dispatch.

Semantics follow llm-d-router's ``flowcontrol/eviction`` and its reclamation controller:

* **Tracking.** Every dispatched request is tracked from its dispatch to the end of its
  attempt. Only sheddable ones (priority < 0, llm-d's ``eviction-sheddable-filter``) are
  evictable; the victim is the lowest priority, then the most recently dispatched (llm-d's
  ``eviction-priority-then-time-ordering``: the least KV-cache work is lost).
* **Trigger.** A dispatch cycle that stops because the pool is saturated asks
  :meth:`InFlightEviction.reclaim` with the blocked bands (highest first) and their ceilings.
  Demand is eligible only in a band whose priority is strictly above the victim's, whose
  ceiling is above 0 and at or below the saturation, and that holds queued requests.
* **Sizing.** ``credit = saturation / in_flight`` (one lease's mean share of the gauge);
  ``n = max(1, ceil((saturation - ceiling) / credit))``, at most ``max_per_decision`` (llm-d's
  default 2) and the evictable count, each victim below the demand band's priority.
* **Pacing.** Stop-and-wait: no new decision while a revocation is outstanding (its stream has
  not ended) or cooling (``grace_s`` after it ended, llm-d's 500 ms, for the freed capacity to
  reach the gauge); an unconfirmed revocation counts as ended after ``timeout_s`` (10 s).
* **Acting.** Each victim's ``evict`` callback (request control's one hook, which the front
  door answers: a 429 for the client) is called once. The stream's end confirms it.

Counted under llm-d's names: ``llm_d_epp_flow_control_revocations_issued_total{priority,
inference_pool}`` (priority: the demand band's) and ``llm_d_epp_flow_control_revocations_total
{outcome=confirmed|timed_out, inference_pool}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import prometheus_client

#: llm-d-router's defaults (flowcontrol/controller/config.go).
MAX_REVOCATIONS_PER_DECISION = 2
CONFIRMATION_GRACE_S = 0.5
CONFIRMATION_TIMEOUT_S = 10.0


@dataclass(slots=True)
class InFlight:
    """One dispatched request as eviction sees it."""

    request_id: str
    priority: int
    dispatched_at: float
    evict: Callable[[], None]  # ends the request (request control's hook)


class InFlightEviction:
    """Tracks dispatched requests and evicts sheddable ones for blocked higher bands."""

    def __init__(
        self,
        *,
        registry: prometheus_client.CollectorRegistry | None,
        pool: str,
        clock: Callable[[], float] = time.monotonic,
        max_per_decision: int = MAX_REVOCATIONS_PER_DECISION,
        grace_s: float = CONFIRMATION_GRACE_S,
        timeout_s: float = CONFIRMATION_TIMEOUT_S,
    ) -> None:
        self._clock = clock
        self.max_per_decision = max_per_decision
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self._in_flight: dict[str, InFlight] = {}
        self._outstanding: dict[str, float] = {}  # request id -> when its eviction was issued
        self._cooling: list[float] = []  # when each confirmed revocation stops cooling
        reg = prometheus_client.REGISTRY if registry is None else registry
        self._issued = prometheus_client.Counter(
            "llm_d_epp_flow_control_revocations_issued",
            "Total number of in-flight eviction revocations issued, labeled by the demand "
            "band's priority.",
            ("priority", "inference_pool"),
            registry=reg,
        )
        revocations = prometheus_client.Counter(
            "llm_d_epp_flow_control_revocations",
            "Total number of in-flight eviction revocations by terminal outcome (confirmed, "
            "timed_out).",
            ("outcome", "inference_pool"),
            registry=reg,
        )
        self._pool = pool
        self._confirmed = revocations.labels("confirmed", pool)
        self._timed_out = revocations.labels("timed_out", pool)

    # --- the request path ---------------------------------------------------------------

    def track(self, request_id: str, priority: int, evict: Callable[[], None]) -> None:
        """``request_id`` was dispatched; ``evict`` ends it if it is chosen."""
        self._in_flight[request_id] = InFlight(request_id, priority, self._clock(), evict)

    def untrack(self, request_id: str) -> None:
        """``request_id``'s attempt ended; an eviction of it is confirmed."""
        self._in_flight.pop(request_id, None)
        issued = self._outstanding.pop(request_id, None)
        if issued is not None:
            self._cooling.append(self._clock() + self.grace_s)
            self._confirmed.inc()

    # --- the dispatch cycle -------------------------------------------------------------

    def reclaim(
        self,
        saturation: float,
        bands: Sequence[tuple[int, float, bool]],
    ) -> list[str]:
        """Evict for the first eligible blocked band; returns the evicted request ids.

        ``bands``: ``(priority, ceiling, has queued requests)``, highest priority first.
        """
        if not self._gate_open(self._clock()):
            return []
        victim = self._victim()
        if victim is None:
            return []
        for priority, ceiling, queued in bands:
            if priority <= victim.priority:
                return []  # no band at or below the victim's may take its place
            if ceiling <= 0 or saturation < ceiling or not queued:
                continue  # held by policy, not blocked, or nothing waiting
            return self._evict(saturation, ceiling, priority)
        return []

    def _evict(self, saturation: float, ceiling: float, bound: int) -> list[str]:
        evictable = sum(1 for f in self._in_flight.values() if f.priority < 0)
        credit = saturation / len(self._in_flight)
        if credit <= 0 or math.isinf(credit) or math.isnan(credit):
            return []
        # the gate blocks at saturation >= ceiling: free strictly more than the deficit
        n = min(
            max(1, math.ceil((saturation - ceiling) / credit)), self.max_per_decision, evictable
        )
        evicted: list[str] = []
        now = self._clock()
        for _ in range(n):
            victim = self._victim()
            if victim is None or victim.priority >= bound:
                break
            del self._in_flight[victim.request_id]
            self._outstanding[victim.request_id] = now
            evicted.append(victim.request_id)
            victim.evict()
        if evicted:
            self._issued.labels(str(bound), self._pool).inc(len(evicted))
        return evicted

    def _victim(self) -> InFlight | None:
        """Lowest priority, then the most recently dispatched, among sheddable requests."""
        best: InFlight | None = None
        for item in self._in_flight.values():
            if item.priority >= 0:
                continue
            if best is None or (item.priority, -item.dispatched_at) < (
                best.priority,
                -best.dispatched_at,
            ):
                best = item
        return best

    def _gate_open(self, now: float) -> bool:
        """Stop-and-wait: nothing outstanding (timed-out ones retire) and nothing cooling."""
        for request_id, issued in list(self._outstanding.items()):
            if now - issued >= self.timeout_s:
                del self._outstanding[request_id]
                self._cooling.append(now + self.grace_s)
                self._timed_out.inc()
        if self._cooling:
            self._cooling = [t for t in self._cooling if t > now]
        return not self._outstanding and not self._cooling

    def snapshot(self) -> dict[str, int]:
        """Counts for /dashboard and tests."""
        return {
            "in_flight": len(self._in_flight),
            "evictable": sum(1 for f in self._in_flight.values() if f.priority < 0),
            "outstanding": len(self._outstanding),
        }
