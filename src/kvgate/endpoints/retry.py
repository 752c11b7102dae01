"""A retry budget and retry back-off: how many failed attempts may be re-sent, and when.

:class:`RetryBudget` has Envoy's semantics (``circuit_breakers.thresholds.retry_budget``): a
retry may start while the retries in flight are fewer than
``max(min_retry_concurrency, budget_percent % of the requests in flight)``. Under a pool-wide
failure, retries then add at most ``budget_percent`` to the load instead of multiplying it.

The request path calls ``request_started``/``request_finished`` around every client request
and ``try_acquire``/``release`` around every retry (not the first attempt). Everything runs on
one event loop, so there is no locking.

:func:`backoff_s` is exponential back-off with full jitter: retry ``n`` (1-based) waits a
uniform draw from ``[0, min(max_s, base_s * 2 ** (n - 1)))``, as in Marc Brooker's "Exponential
Backoff And Jitter" (AWS Architecture Blog, 2015) and Envoy's route retry back-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry budget and back-off; defaults from Envoy.

    - ``budget_percent`` 20: Envoy's ``retry_budget.budget_percent`` default (also Gateway API's
      ``BackendTrafficPolicy`` retry budget, GEP-3388).
    - ``min_retry_concurrency`` 3: Envoy's ``retry_budget.min_retry_concurrency`` default, so
      a quiet gateway can still retry.
    - ``backoff_base_s`` 0.025 and ``backoff_max_s`` 0.25: Envoy's ``retry_back_off``
      ``base_interval`` default (25 ms) and its ``max_interval`` default (10 x base). A retry
      goes to another replica, so a short wait is enough; SGLang's gateway starts at 50 ms
      (``--retry-initial-backoff-ms``) for retries that may hit the same worker.
    """

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.budget_percent <= 100:
            problems.append(f"budget_percent: expected 0..100, got {self.budget_percent}")
        if self.min_retry_concurrency < 0:
            problems.append(
                f"min_retry_concurrency: expected >= 0, got {self.min_retry_concurrency}"
            )
        if self.backoff_base_s < 0:
            problems.append(f"backoff_base_s: expected >= 0, got {self.backoff_base_s}")
        if self.backoff_max_s < self.backoff_base_s:
            problems.append(
                f"backoff_max_s: expected >= backoff_base_s ({self.backoff_base_s}), "
                f"got {self.backoff_max_s}"
            )
        if problems:
            raise ValueError("RetryConfig: " + "; ".join(problems))


class RetryBudget:
    """Retries in flight bounded by a share of requests in flight; see the module docstring.

    Invariants: ``active_retries <= max(active_retries_limit, retries granted before the
    requests in flight fell)``; a denied ``try_acquire`` changes nothing but ``denied``.
    """

    def __init__(self, config: RetryConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.active_requests = 0
        self.active_retries = 0
        self.denied = 0
        self._denied_total = Counter(
            "kvgate_retry_budget_denied",
            "Retries not made because the retry budget was spent",
            registry=registry,
        )
        self._active_gauge = Gauge(
            "kvgate_retries_in_flight", "Retries in progress", registry=registry
        )

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests = max(0, self.active_requests - 1)

    @property
    def limit(self) -> int:
        """How many retries may be in flight now."""
        share = int(self.config.budget_percent * self.active_requests // 100)
        return max(self.config.min_retry_concurrency, share)

    def try_acquire(self) -> bool:
        """Take a retry slot; False (and ``denied`` + 1) when the budget is spent."""
        if self.active_retries >= self.limit:
            self.denied += 1
            self._denied_total.inc()
            return False
        self.active_retries += 1
        self._active_gauge.set(self.active_retries)
        return True

    def release(self) -> None:
        """Give back a slot taken by ``try_acquire`` when that retry ends."""
        self.active_retries = max(0, self.active_retries - 1)
        self._active_gauge.set(self.active_retries)


class Random(Protocol):
    """What :func:`backoff_s` needs of ``random.Random``."""

    def random(self) -> float: ...


# 2 ** 60 times any sane base overflows every cap; stop doubling there (and avoid float overflow)
_MAX_DOUBLINGS = 60


def backoff_s(attempt: int, base_s: float, max_s: float, rng: Random) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry): full jitter.

    A uniform draw from ``[0, min(max_s, base_s * 2 ** (attempt - 1)))``.
    """
    if attempt < 1:
        raise ValueError(f"attempt: expected >= 1, got {attempt}")
    ceiling = min(max_s, math.ldexp(base_s, min(attempt - 1, _MAX_DOUBLINGS)))
    return rng.random() * ceiling


__all__ = ["Random", "RetryBudget", "RetryConfig", "backoff_s"]
