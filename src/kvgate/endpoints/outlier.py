"""Outlier ejection: a circuit breaker per endpoint, fed by the outcome of every attempt.

A replica that answers 500 at once looks idle to the queue and KV-cache scorers, so without
this it keeps winning picks. The request path reports each attempt's outcome with
:meth:`OutlierDetector.record`; :class:`~kvgate.endpoints.pool.EndpointPool` leaves ejected
endpoints out of :meth:`~kvgate.endpoints.pool.EndpointPool.candidates`.

One breaker per endpoint name::

    closed --N consecutive failures--> open --ejection time passes--> half-open
      ^                                 ^                                 |
      |                                 +------- a probe fails ----------+
      +------------------------------- a probe succeeds ------------------+

Invariants the detector keeps:

- Only outcomes in ``OutlierConfig.failure_outcomes`` count as failures; a success resets the
  consecutive count (Envoy's ``consecutive_5xx``).
- Ejection time is ``base_ejection_s`` times the endpoint's ejection count, capped at
  ``max_ejection_s`` (Envoy's ``base_ejection_time`` multiplier and ``max_ejection_time``).
  The count drops by one for every ``base_ejection_s`` the endpoint then spends closed, so a
  replica that recovered for good starts again from the base time.
- Open -> half-open happens lazily, when anything asks (``allows``, ``filter``, ``ejected``,
  ``snapshot``, a metrics scrape): no timers.
- Half-open lets at most ``half_open_probes`` attempts through at once (counted by
  :meth:`OutlierDetector.started`, released by ``record``/``cancelled``); the first success
  closes the breaker, a failure reopens it with the next, longer ejection time.
- The floor (Envoy's ``max_ejection_percent``, checked when a breaker would open): the first
  ejection is always allowed; a further one only while fewer than ``max_ejection_percent`` of
  the endpoints in rotation are out (open or half-open). Independently, no ejection may leave
  fewer than ``min_hosts`` endpoints in rotation. A refused ejection leaves the breaker closed
  with its count reset and is counted as skipped (Envoy's ``ejections_overflow``). Because the
  pool can shrink after an ejection (a replica fails its scrapes), :meth:`filter` applies
  ``min_hosts`` again per call and readmits the endpoints closest to their return.

All calls happen on one event loop (the request path and the pool), so there is no locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Literal, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

Outcome = Literal["success", "5xx", "connect", "timeout"]
FailureOutcome = Literal["5xx", "connect", "timeout"]

#: Every outcome that may count as a failure; the default counts them all, as Envoy's
#: ``consecutive_5xx`` does when local-origin errors are not split out.
FAILURE_OUTCOMES: Final[frozenset[str]] = frozenset({"5xx", "connect", "timeout"})
OUTCOMES: Final[frozenset[str]] = FAILURE_OUTCOMES | {"success"}


class BreakerState(IntEnum):
    """The gauge value of each state (``kvgate_outlier_breaker_state``)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """How endpoints are ejected; defaults follow Envoy's outlier detection.

    - ``consecutive_failures`` 5: Envoy's ``consecutive_5xx`` default (Istio's
      ``consecutive5xxErrors`` too). SGLang's gateway trips at 10 (``--cb-failure-threshold``);
      5 sheds a replica that fails at once after five wasted round trips.
    - ``base_ejection_s`` 30: Envoy's ``base_ejection_time`` (SGLang waits 60 s,
      ``--cb-timeout-duration-secs``).
    - ``max_ejection_s`` 300: Envoy's ``max_ejection_time``.
    - ``max_ejection_percent`` 10: Envoy's and Istio's default, with Envoy's rule that the first
      ejection is always allowed (so one bad replica of two or of eight is ejected).
    - ``min_hosts`` 1: never eject the last endpoint in rotation; a lone failing replica still
      answers (with its error) rather than the gateway answering 503. Envoy reaches the same
      end through its panic threshold.
    - ``half_open_probes`` 1: one probe at a time after the ejection time (SGLang's half-open
      state lets requests through and closes after successes; one probe is the cautious end).
    - ``failure_outcomes``: which outcomes count (``5xx``, ``connect``, ``timeout``); all by
      default. Drop ``timeout`` where long generations legitimately time out.
    - ``enabled`` False turns ejection off: ``record`` and ``started`` do nothing.
    """

    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 10
    min_hosts: int = 1
    half_open_probes: int = 1
    enabled: bool = True
    failure_outcomes: frozenset[str] = field(default=FAILURE_OUTCOMES)

    def __post_init__(self) -> None:
        problems = []
        if self.consecutive_failures < 1:
            problems.append(f"consecutive_failures: expected >= 1, got {self.consecutive_failures}")
        if self.base_ejection_s <= 0:
            problems.append(f"base_ejection_s: expected > 0, got {self.base_ejection_s}")
        if self.max_ejection_s < self.base_ejection_s:
            problems.append(
                f"max_ejection_s: expected >= base_ejection_s ({self.base_ejection_s}), "
                f"got {self.max_ejection_s}"
            )
        if not 0 <= self.max_ejection_percent <= 100:
            problems.append(
                f"max_ejection_percent: expected 0..100, got {self.max_ejection_percent}"
            )
        if self.min_hosts < 0:
            problems.append(f"min_hosts: expected >= 0, got {self.min_hosts}")
        if self.half_open_probes < 1:
            problems.append(f"half_open_probes: expected >= 1, got {self.half_open_probes}")
        unknown = set(self.failure_outcomes) - FAILURE_OUTCOMES
        if unknown or not self.failure_outcomes:
            problems.append(
                f"failure_outcomes: expected a non-empty subset of "
                f"{sorted(FAILURE_OUTCOMES)}, got {sorted(self.failure_outcomes)}"
            )
        if problems:
            raise ValueError("OutlierConfig: " + "; ".join(problems))


@dataclass(slots=True)
class _Breaker:
    """One endpoint's breaker; times are on the detector's clock."""

    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0  # failures since the last success (closed state)
    ejections: int = 0  # the multiplier: ejections not yet decayed
    ejected_until: float = 0.0  # open -> half-open at this time
    closed_since: float = 0.0  # when it last closed (the multiplier decays from here)
    probes_in_flight: int = 0  # half-open: attempts started and not yet reported


class Named(Protocol):
    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Named)


class OutlierDetector:
    """One breaker per endpoint name; see the module docstring for the state machine.

    ``rotation_size`` (set by the pool through :meth:`attach`) says how many endpoints are in
    rotation before ejection: the base of ``max_ejection_percent`` and ``min_hosts``. Unattached,
    the detector uses the number of endpoints it has seen.
    """

    def __init__(
        self,
        config: OutlierConfig,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}
        self._out: set[str] = set()  # names whose breaker is open or half-open
        self._rotation_size: Callable[[], int] = lambda: len(self._breakers)
        self._ejections = Counter(
            "kvgate_outlier_ejections",
            "Endpoints ejected by outlier detection, by endpoint and reason",
            ["endpoint", "reason"],
            registry=registry,
        )
        self._skipped = Counter(
            "kvgate_outlier_ejections_skipped",
            "Ejections not made because of max_ejection_percent or min_hosts, by endpoint",
            ["endpoint", "reason"],
            registry=registry,
        )
        self._series: dict[str, set[tuple[str, str, str]]] = {}  # endpoint -> counter labels
        if registry is not None:
            registry.register(_StateCollector(self))

    # --- wiring -------------------------------------------------------------------------------

    def attach(self, rotation_size: Callable[[], int]) -> None:
        """Count endpoints in rotation with ``rotation_size`` (the pool's healthy endpoints)."""
        self._rotation_size = rotation_size

    # --- the request path ---------------------------------------------------------------------

    def record(self, endpoint: str, outcome: Outcome) -> None:
        """Report how one attempt on ``endpoint`` ended."""
        if not self.config.enabled:
            return
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {sorted(OUTCOMES)}, got {outcome!r}")
        b = self._breakers.get(endpoint)
        if b is None:
            b = self._breakers[endpoint] = _Breaker(closed_since=self._clock())
        now = self._clock()
        self._advance(endpoint, b, now)
        failed = outcome in self.config.failure_outcomes
        if b.state is BreakerState.HALF_OPEN:
            b.probes_in_flight = max(0, b.probes_in_flight - 1)
            if failed:
                self._open(endpoint, b, now, "probe_failed")
            elif outcome == "success":
                self._close(endpoint, b, now)
            return
        if b.state is BreakerState.OPEN:
            return  # an attempt sent before the ejection; it changes nothing
        if outcome == "success":
            b.consecutive_failures = 0
        elif failed:
            b.consecutive_failures += 1
            if b.consecutive_failures >= self.config.consecutive_failures:
                b.consecutive_failures = 0
                skip = self._ejection_refused(endpoint)
                if skip is None:
                    self._decay(b, now)
                    self._open(endpoint, b, now, "consecutive_failures")
                else:
                    self._count("skipped", endpoint, skip)

    def started(self, endpoint: str) -> None:
        """An attempt is being sent to ``endpoint``: in half-open it takes a probe slot.

        The request path calls this for every attempt and then exactly one of :meth:`record`
        or :meth:`cancelled`. Without it half-open admits every request until the first
        outcome arrives.
        """
        b = self._breakers.get(endpoint)
        if b is not None and b.state is BreakerState.HALF_OPEN:
            b.probes_in_flight += 1

    def cancelled(self, endpoint: str) -> None:
        """An attempt ended without a verdict (the client went away): free its probe slot."""
        b = self._breakers.get(endpoint)
        if b is not None and b.state is BreakerState.HALF_OPEN:
            b.probes_in_flight = max(0, b.probes_in_flight - 1)

    def allows(self, endpoint: str) -> bool:
        """False while open; half-open allows while a probe slot is free; closed allows."""
        return self._allows_at(endpoint, self._clock())

    def _allows_at(self, endpoint: str, now: float) -> bool:
        b = self._breakers.get(endpoint)
        if b is None:
            return True
        self._advance(endpoint, b, now)
        if b.state is BreakerState.CLOSED:
            return True
        if b.state is BreakerState.HALF_OPEN:
            return b.probes_in_flight < self.config.half_open_probes
        return False

    @property
    def any_out(self) -> bool:
        """Whether any breaker is open or half-open (the pool's fast path when not)."""
        return bool(self._out)

    def filter(self, endpoints: Sequence[E]) -> list[E]:
        """``endpoints`` (those in rotation) minus the ones the breakers hold back.

        Keeps ``config.min_hosts`` endpoints: if fewer are allowed, the held-back ones closest
        to their return (half-open first, then earliest ``ejected_until``) are readmitted.
        """
        if not self._out:
            return list(endpoints)
        now = self._clock()
        kept: list[E] = []
        held: list[E] = []
        for e in endpoints:
            (kept if self._allows_at(e.name, now) else held).append(e)
        missing = min(self.config.min_hosts, len(endpoints)) - len(kept)
        if missing > 0:
            held.sort(key=self._return_order)
            readmit = {id(e) for e in held[:missing]}
            kept = [e for e in endpoints if id(e) in readmit or self._allows_at(e.name, now)]
        return kept

    def ejected(self) -> frozenset[str]:
        """Names whose breaker is open or half-open (out of normal rotation)."""
        now = self._clock()
        for name in list(self._out):
            self._advance(name, self._breakers[name], now)
        return frozenset(self._out)

    # --- the pool -----------------------------------------------------------------------------

    def forget(self, endpoint: str) -> None:
        """``endpoint`` left the pool: drop its breaker and its metric series."""
        self._breakers.pop(endpoint, None)
        self._out.discard(endpoint)
        for metric, name, reason in self._series.pop(endpoint, set()):
            counter = self._ejections if metric == "ejections" else self._skipped
            counter.remove(name, reason)

    def snapshot(self) -> dict[str, Any]:
        """Per-endpoint state for /dashboard and tests (JSON-ready)."""
        now = self._clock()
        endpoints: dict[str, dict[str, Any]] = {}
        for name, b in list(self._breakers.items()):
            self._advance(name, b, now)
            endpoints[name] = {
                "state": b.state.name.lower(),
                "consecutive_failures": b.consecutive_failures,
                "ejections": b.ejections,
                "ejected_for_s": max(0.0, b.ejected_until - now)
                if b.state is BreakerState.OPEN
                else 0.0,
                "probes_in_flight": b.probes_in_flight,
            }
        return {"enabled": self.config.enabled, "endpoints": endpoints}

    def states(self) -> Iterator[tuple[str, BreakerState]]:
        """``(endpoint, state)`` for every tracked endpoint, transitions applied."""
        now = self._clock()
        for name, b in list(self._breakers.items()):
            self._advance(name, b, now)
            yield name, b.state

    # --- internals ----------------------------------------------------------------------------

    def _advance(self, name: str, b: _Breaker, now: float) -> None:
        if b.state is BreakerState.OPEN and now >= b.ejected_until:
            b.state = BreakerState.HALF_OPEN
            b.probes_in_flight = 0

    def _decay(self, b: _Breaker, now: float) -> None:
        """Forget one past ejection per ``base_ejection_s`` spent closed since the last one."""
        if b.ejections:
            healed = int((now - b.closed_since) // self.config.base_ejection_s)
            b.ejections = max(0, b.ejections - healed)

    def _open(self, name: str, b: _Breaker, now: float, reason: str) -> None:
        b.ejections += 1
        duration = min(self.config.base_ejection_s * b.ejections, self.config.max_ejection_s)
        b.state = BreakerState.OPEN
        b.ejected_until = now + duration
        b.probes_in_flight = 0
        b.consecutive_failures = 0
        self._out.add(name)
        self._count("ejections", name, reason)

    def _close(self, name: str, b: _Breaker, now: float) -> None:
        b.state = BreakerState.CLOSED
        b.closed_since = now
        b.consecutive_failures = 0
        b.probes_in_flight = 0
        self._out.discard(name)

    def _ejection_refused(self, name: str) -> str | None:
        """Why ejecting ``name`` now would break the floor, or None when it may go."""
        total = max(self._rotation_size(), len(self._out) + 1)
        out = len(self._out)
        if total - out - 1 < self.config.min_hosts:
            return "min_hosts"
        if out > 0 and out * 100 >= self.config.max_ejection_percent * total:
            return "max_ejection_percent"
        return None

    def _return_order(self, e: Named) -> tuple[int, float]:
        b = self._breakers.get(e.name)
        if b is None:
            return (0, 0.0)
        return (0 if b.state is BreakerState.HALF_OPEN else 1, b.ejected_until)

    def _count(self, metric: Literal["ejections", "skipped"], name: str, reason: str) -> None:
        counter = self._ejections if metric == "ejections" else self._skipped
        counter.labels(name, reason).inc()
        self._series.setdefault(name, set()).add((metric, name, reason))


class _StateCollector:
    """``kvgate_outlier_breaker_state``, computed at scrape time so it is never stale."""

    def __init__(self, detector: OutlierDetector) -> None:
        self._detector = detector

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        for name, state in self._detector.states():
            family.add_metric([name], float(state))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "kvgate_outlier_breaker_state",
            "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
            labels=["endpoint"],
        )


__all__ = [
    "FAILURE_OUTCOMES",
    "OUTCOMES",
    "BreakerState",
    "FailureOutcome",
    "Outcome",
    "OutlierConfig",
    "OutlierDetector",
]
