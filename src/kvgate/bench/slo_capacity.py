"""Capacity at SLO: per policy, the highest request rate whose TTFT p90 and ITL p90 stay
under given SLOs (``kvgate bench capacity``).

Every probe runs the workload at one Poisson rate on a fresh cluster
(:func:`kvgate.bench.compare.run_policy`), so no probe inherits a warm cache or a queue from
the one before. The search is a bisection over rates between ``rate_lo`` and ``rate_hi``:

1. probe ``rate_lo``; if it misses, the capacity is below the range (reported as 0);
2. probe ``rate_hi``; if it meets, the capacity is at least the range's top (reported as
   ``rate_hi`` with ``bracketed = False``);
3. then at most ``steps`` probes at the geometric middle of the bracket (rates are
   multiplicative: 2 → 4 is as wide as 16 → 32), keeping the invariant "``lo`` meets, ``hi``
   misses", stopping early once ``hi / lo <= 1 + tolerance``.

So a search costs at most ``steps + 2`` runs, and its answer is within a factor
``(rate_hi / rate_lo) ** (1 / 2**steps)`` of the true boundary (as far as one run per rate
measures it). A probe *meets* the SLO when its TTFT p90 and ITL p90 are at or under the
limits and at most ``max_error_share`` of its requests failed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.bench.runner import RequestRecord
from kvgate.bench.vllm_results import vllm_result

__all__ = ["CapacitySearch", "Probe", "SLOTarget", "SettledMiss", "evaluate", "search_capacity"]


@dataclass(frozen=True, slots=True)
class SLOTarget:
    """The limits a probe must meet (ms) and the failures it may have."""

    ttft_p90_ms: float
    itl_p90_ms: float
    max_error_share: float = 0.01

    def goodput_slos_ms(self) -> dict[str, float]:
        """vLLM's ``--goodput ttft:MS tpot:MS`` for the same limits, per request."""
        return {"ttft": self.ttft_p90_ms, "tpot": self.itl_p90_ms}


@dataclass(slots=True)
class Probe:
    """One run at one rate."""

    rate: float
    requests: int
    errors: int
    ttft_p90_ms: float | None
    itl_p90_ms: float | None
    meets: bool
    #: the run under vllm bench serve's result keys (goodput against the SLO target)
    vllm: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why the run did not happen (the policy could not start)
    #: what else the run measured, to judge the verdict by: prefix-cache hit rate, balance
    #: (busiest / mean replica), simulated replicas' lag share, the load average at its end
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CapacitySearch:
    """The search's answer for one policy; ``probes`` in the order they ran."""

    policy: str
    capacity_rps: float  # highest rate that met the SLO (0: not even rate_lo)
    bracketed: bool  # False when rate_hi met too (the capacity is at least capacity_rps)
    probes: list[Probe]
    miss_rps: float | None = None  # lowest rate seen to miss (None if none missed)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "capacity_rps": self.capacity_rps,
            "bracketed": self.bracketed,
            "miss_rps": self.miss_rps,
            "probes": [
                {
                    "rate": p.rate,
                    "requests": p.requests,
                    "errors": p.errors,
                    "ttft_p90_ms": p.ttft_p90_ms,
                    "itl_p90_ms": p.itl_p90_ms,
                    "meets": p.meets,
                    "skipped": p.skipped,
                    **p.context,
                    "vllm": p.vllm,
                }
                for p in self.probes
            ],
        }


def _p90_ms(values_s: Sequence[float]) -> float | None:
    if not values_s:
        return None
    if len(values_s) == 1:
        return values_s[0] * 1e3
    return statistics.quantiles(values_s, n=10, method="inclusive")[8] * 1e3


def evaluate(rate: float, records: Sequence[RequestRecord], slo: SLOTarget) -> Probe:
    """Whether the run at ``rate`` that produced ``records`` meets ``slo``."""
    ok = [r for r in records if r.ok]
    errors = len(records) - len(ok)
    ttft = _p90_ms([r.ttft_s for r in ok if r.ttft_s is not None])
    itl = _p90_ms([gap for r in ok for gap in r.itl_s])
    meets = (
        bool(records)
        and ttft is not None
        and ttft <= slo.ttft_p90_ms
        and (itl is None or itl <= slo.itl_p90_ms)
        and errors <= slo.max_error_share * len(records)
    )
    return Probe(
        rate,
        len(records),
        errors,
        ttft,
        itl,
        meets,
        vllm_result(records, goodput_slos_ms=slo.goodput_slos_ms()),
    )


class SettledMiss:
    """``RunConfig.stop_when`` for a probe: stops it once it must miss ``slo`` however the
    requests still in flight end, so an overloaded probe does not wait out its backlog.

    Counted over the measured requests as they complete, and decided only once nothing more
    may be issued (the number issued, ``n``, is then final): more than ``max_error_share · n``
    failures; or at least ``0.1 · n + 2`` successes with a TTFT over the limit, which puts the
    TTFT p90 of any final set of successes over it (at most ``n`` successes; the inclusive
    quantile reads the value at position ``⌊0.9·(n - 1)⌋`` or above it). ``reason`` keeps why.
    """

    def __init__(self, slo: SLOTarget) -> None:
        self.slo = slo
        self.errors = 0
        self.slow = 0
        self.reason: str | None = None

    def __call__(self, record: RequestRecord, issued: int, arrivals_done: bool) -> str | None:
        if not record.ok:
            self.errors += 1
        elif record.ttft_s is not None and record.ttft_s * 1e3 > self.slo.ttft_p90_ms:
            self.slow += 1
        if not arrivals_done:
            return None
        if self.errors > self.slo.max_error_share * issued:
            self.reason = f"{self.errors} of {issued} requests failed"
        elif self.slow >= 0.1 * issued + 2:
            self.reason = (
                f"{self.slow} of {issued} requests over the TTFT limit "
                f"({self.slo.ttft_p90_ms:g} ms)"
            )
        return self.reason


def search_capacity(
    policy: str,
    measure: Callable[[float], Probe],
    *,
    rate_lo: float,
    rate_hi: float,
    steps: int = 4,
    tolerance: float = 0.05,
) -> CapacitySearch:
    """Bisect rates for ``policy`` with ``measure(rate)`` (one fresh run per call); see the
    module docstring. Raises ValueError for a range that is not ``0 < rate_lo < rate_hi``."""
    if not 0 < rate_lo < rate_hi:
        raise ValueError(f"capacity: expected 0 < rate_lo < rate_hi, got {rate_lo}, {rate_hi}")
    if steps < 0:
        raise ValueError(f"capacity: steps: expected >= 0, got {steps}")
    probes: list[Probe] = []

    def probe(rate: float) -> Probe:
        result = measure(rate)
        probes.append(result)
        return result

    if not probe(rate_lo).meets:
        return CapacitySearch(policy, 0.0, True, probes, miss_rps=rate_lo)
    if probe(rate_hi).meets:
        return CapacitySearch(policy, rate_hi, False, probes)
    lo, hi = rate_lo, rate_hi
    for _ in range(steps):
        if hi / lo <= 1.0 + tolerance:
            break
        mid = math.sqrt(lo * hi)
        if probe(mid).meets:
            lo = mid
        else:
            hi = mid
    return CapacitySearch(policy, lo, True, probes, miss_rps=hi)
