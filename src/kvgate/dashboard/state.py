"""The dashboard's state: the last requests and per-interval series, fed by one hook.

:meth:`DashboardState.attach` adds :meth:`DashboardState.record` to
:attr:`kvgate.requestcontrol.control.RequestControl.on_finish`; per finished request it appends
the :class:`~kvgate.requestcontrol.control.RequestContext` itself to a ring (a reference: no
copy, no dict) and adds the request's numbers to the current interval's counters (one
``bisect`` each for TTFT and latency). Everything else is done when a snapshot is asked for:
by ``/dashboard/snapshot`` or a connected ``/dashboard/events`` client, at most once per
:data:`SNAPSHOT_MIN_INTERVAL_S` however many clients are connected.

Invariants:

* memory is bounded: ``ring_size`` contexts, ``points`` closed intervals, and one small
  counter set per endpoint and interval;
* ``totals.requests`` counts every finished request exactly once (``finish`` runs exactly
  once per request), so it equals the growth of ``kvgate_requests_total`` since attaching;
  ``totals.picks`` counts, per endpoint, the finished requests whose last attempt went there;
* interval ``i`` covers ``[start_i, start_i + interval_s)`` on ``time.perf_counter``'s clock;
  idle intervals are kept as empty points, so the charts' time axis has no holes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from kvgate.requestcontrol.reqlog import scores_of

if TYPE_CHECKING:
    from kvgate.requestcontrol.control import RequestContext, RequestControl

#: Requests kept for the page's request table and ``kvgate explain --request-id``.
RING_SIZE = 200
#: Seconds per chart point, and points kept (5 minutes).
INTERVAL_S = 1.0
POINTS = 300
#: Per-endpoint picks/s and hit rate are over this many seconds of closed intervals.
RATE_WINDOW_S = 10.0
#: Snapshots are rebuilt at most this often, shared by every connected client.
SNAPSHOT_MIN_INTERVAL_S = 0.5

#: Upper bounds (seconds) of the latency buckets: 0.5 ms growing by 25 % to about 2 minutes.
LATENCY_EDGES_S: tuple[float, ...] = tuple(0.0005 * 1.25**i for i in range(56))

_encoder = msgspec.json.Encoder()


def quantile_s(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a bucket histogram over :data:`LATENCY_EDGES_S` (linear within
    the bucket; the last bucket is open and reports its lower edge); None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = LATENCY_EDGES_S[i - 1] if i > 0 else 0.0
            if i >= len(LATENCY_EDGES_S):
                return lo
            return lo + (LATENCY_EDGES_S[i] - lo) * ((rank - seen) / n)
        seen += n
    return LATENCY_EDGES_S[-1]


class _Interval:
    """Counters of the requests that finished in one interval."""

    __slots__ = (
        "cached_tokens",
        "completion_tokens",
        "e2e",
        "errors",
        "per_endpoint",
        "point",
        "prompt_tokens",
        "requests",
        "start",
        "ttft",
    )

    def __init__(self, start: float) -> None:
        self.start = start  # perf_counter seconds
        self.requests = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.ttft = [0] * (len(LATENCY_EDGES_S) + 1)  # streams only, as the TTFT histogram
        self.e2e = [0] * (len(LATENCY_EDGES_S) + 1)
        # endpoint -> [picks, prompt tokens, cached tokens]
        self.per_endpoint: dict[str, list[int]] = {}
        self.point: dict[str, Any] | None = None  # the chart point, once closed


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


class DashboardState:
    """See the module docstring. ``door`` is ``"gateway"`` or ``"epp"``; one event loop."""

    def __init__(
        self,
        control: RequestControl,
        door: str,
        *,
        ring_size: int = RING_SIZE,
        interval_s: float = INTERVAL_S,
        points: int = POINTS,
    ) -> None:
        self.control = control
        self.door = door
        self.interval_s = interval_s
        self.ring: deque[RequestContext] = deque(maxlen=ring_size)
        self.closed: deque[_Interval] = deque(maxlen=points)
        now = time.perf_counter()
        self.started = now
        self.current = _Interval(now)
        self._interval_end = now + interval_s
        self.total_requests = 0
        self.total_errors = 0
        self.total_picks: dict[str, int] = {}
        self._snapshot: bytes = b""
        self._snapshot_at = float("-inf")

    def attach(self) -> DashboardState:
        """Register with the request path (idempotent); returns self."""
        if self.record not in self.control.on_finish:
            self.control.on_finish.append(self.record)
        return self

    # --- the hot path -----------------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """One finished request (RequestControl.on_finish)."""
        self.ring.append(ctx)
        duration = ctx.duration_s or 0.0
        now = ctx.started + duration
        if now >= self._interval_end:
            self._roll(now)
        cur = self.current
        cur.requests += 1
        self.total_requests += 1
        if ctx.error is not None or ctx.status >= 400:
            cur.errors += 1
            self.total_errors += 1
        cur.e2e[bisect_left(LATENCY_EDGES_S, duration)] += 1
        if ctx.stream and ctx.ttft_s is not None:
            cur.ttft[bisect_left(LATENCY_EDGES_S, ctx.ttft_s)] += 1
        prompt = ctx.prompt_tokens or 0
        cached = ctx.cached_tokens or 0
        cur.prompt_tokens += prompt
        cur.cached_tokens += cached
        cur.completion_tokens += ctx.completion_tokens or 0
        endpoint = ctx.endpoint
        if endpoint is not None:
            name = endpoint.name
            self.total_picks[name] = self.total_picks.get(name, 0) + 1
            counts = cur.per_endpoint.get(name)
            if counts is None:
                counts = cur.per_endpoint[name] = [0, 0, 0]
            counts[0] += 1
            counts[1] += prompt
            counts[2] += cached

    def _roll(self, now: float) -> None:
        """Close intervals up to ``now``; idle ones become empty points (at most ``points``)."""
        step = self.interval_s
        start = self.current.start
        self.closed.append(self.current)
        start += step
        missing = int((now - start) // step)
        maxlen = self.closed.maxlen or 0
        if missing > maxlen:  # a long idle gap: only the last ``points`` matter
            start += (missing - maxlen) * step
            missing = maxlen
        for _ in range(missing):
            self.closed.append(_Interval(start))
            start += step
        self.current = _Interval(start)
        self._interval_end = start + step

    # --- reading ----------------------------------------------------------------------------

    def find(self, request_id: str) -> RequestContext | None:
        """The newest request in the ring with this id."""
        for ctx in reversed(self.ring):
            if ctx.request is not None and ctx.request.request_id == request_id:
                return ctx
        return None

    def snapshot_bytes(self) -> bytes:
        """The snapshot as JSON, rebuilt at most every SNAPSHOT_MIN_INTERVAL_S."""
        now = time.perf_counter()
        if now - self._snapshot_at >= SNAPSHOT_MIN_INTERVAL_S or not self._snapshot:
            self._snapshot = _encoder.encode(self.snapshot())
            self._snapshot_at = now
        return self._snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (see docs/dashboard.md for the fields)."""
        now = time.perf_counter()
        if now >= self._interval_end:
            self._roll(now)
        wall_offset = time.time() - now
        control = self.control
        return {
            "door": self.door,
            "time": round(time.time(), 3),
            "uptime_s": round(now - self.started, 3),
            "interval_s": self.interval_s,
            "totals": {
                "requests": self.total_requests,
                "errors": self.total_errors,
                "picks": dict(self.total_picks),
            },
            "profiles": self._profiles(),
            "endpoints": self._endpoints(now),
            "requests": [self.request_view(ctx, wall_offset) for ctx in reversed(self.ring)],
            "series": self._series(wall_offset),
            "flow_control": control.flow.snapshot() if control.flow is not None else None,
        }

    def _profiles(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, profile in self.control.scheduler.profiles.items():
            out[name] = [
                {"name": ws.scorer.name, "type": ws.scorer.type_name, "weight": ws.weight}
                for ws in profile.scorers
            ]
        return out

    def _window(self) -> Iterator[_Interval]:
        """The closed intervals of the last RATE_WINDOW_S."""
        count = max(1, int(RATE_WINDOW_S / self.interval_s))
        closed = self.closed
        for i in range(max(0, len(closed) - count), len(closed)):
            yield closed[i]

    def _endpoints(self, now: float) -> list[dict[str, Any]]:
        pool = self.control.pool
        in_rotation = {e.name for e in pool.candidates()}
        breakers: dict[str, Any] = {}
        if pool.outlier is not None:
            breakers = pool.outlier.snapshot()["endpoints"]
        window = list(self._window())
        span = len(window) * self.interval_s
        rows = []
        for endpoint in pool.all():
            name = endpoint.name
            picks = prompt = cached = 0
            for interval in window:
                counts = interval.per_endpoint.get(name)
                if counts is not None:
                    picks += counts[0]
                    prompt += counts[1]
                    cached += counts[2]
            m = endpoint.metrics
            age = m.age_s()
            breaker = breakers.get(name)
            rows.append(
                {
                    "name": name,
                    "address": f"{endpoint.address}:{endpoint.port}",
                    "healthy": pool.is_healthy(name),
                    "in_rotation": name in in_rotation,
                    "breaker": breaker["state"] if breaker else "closed",
                    "waiting": m.waiting_queue_size,
                    "running": m.running_requests_size,
                    "kv_cache_usage": round(m.kv_cache_usage_percent, 4),
                    "metrics_age_s": None if age == float("inf") else round(age, 3),
                    "picks_total": self.total_picks.get(name, 0),
                    "picks_per_s": round(picks / span, 3) if span else 0.0,
                    "hit_rate": round(cached / prompt, 4) if prompt else None,
                    "engine_hit_rate": round(m.prefix_cache_hits / m.prefix_cache_queries, 4)
                    if m.prefix_cache_queries
                    else None,
                }
            )
        return rows

    def _series(self, wall_offset: float) -> dict[str, list[Any]]:
        keys: tuple[str, ...] = ("t", "requests_per_s", "tokens_per_s", "hit_rate", "errors")
        keys += ("ttft_p50_ms", "ttft_p90_ms", "e2e_p50_ms", "e2e_p90_ms")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        step = self.interval_s
        for interval in self.closed:
            point = interval.point
            if point is None:  # closed intervals never change: compute once
                point = interval.point = {
                    "t": interval.start + step,
                    "requests_per_s": round(interval.requests / step, 3),
                    "tokens_per_s": round(interval.completion_tokens / step, 3),
                    "hit_rate": round(interval.cached_tokens / interval.prompt_tokens, 4)
                    if interval.prompt_tokens
                    else None,
                    "errors": interval.errors,
                    "ttft_p50_ms": _ms(quantile_s(interval.ttft, 0.5)),
                    "ttft_p90_ms": _ms(quantile_s(interval.ttft, 0.9)),
                    "e2e_p50_ms": _ms(quantile_s(interval.e2e, 0.5)),
                    "e2e_p90_ms": _ms(quantile_s(interval.e2e, 0.9)),
                }
            for k in keys:
                out[k].append(point[k])
        out["t"] = [round(t + wall_offset, 3) for t in out["t"]]
        return out

    @staticmethod
    def request_view(ctx: RequestContext, wall_offset: float) -> dict[str, Any]:
        """One request as the page and ``kvgate explain --request-id`` show it."""
        request = ctx.request
        result = ctx.result
        winner: str | None = None
        profile: str | None = None
        if result is not None:
            profile = result.primary_profile_name
            try:
                winner = result.target.name
            except LookupError:
                winner = None
        duration = ctx.duration_s or 0.0
        return {
            "request_id": request.request_id if request is not None else None,
            "time": round(ctx.started + duration + wall_offset, 3),
            "door": ctx.door,
            "path": ctx.path,
            "model": ctx.model or None,
            "status": ctx.status,
            "error": ctx.error,
            "endpoint": ctx.endpoint.name if ctx.endpoint is not None else None,
            "winner": winner,
            "profile": profile,
            "attempts": ctx.attempts,
            "stream": ctx.stream,
            "fairness_id": ctx.fairness_id or None,
            "priority": ctx.flow_priority,
            "queue_wait_ms": _ms(ctx.queue_wait_s),
            "ttft_ms": _ms(ctx.ttft_s) if ctx.stream else None,
            "duration_ms": _ms(duration),
            "prompt_tokens": ctx.prompt_tokens,
            "cached_tokens": ctx.cached_tokens,
            "completion_tokens": ctx.completion_tokens,
            "scores": scores_of(result),
        }
