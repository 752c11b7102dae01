"""``concurrency-detector``: saturation from kvgate's own in-flight request counts.

Counts requests dispatched to each endpoint and not yet completed (``on_dispatched`` /
``on_completed``), so it reacts at once, without waiting for a scrape::

    saturation = (Σ in-flight + pending) / (n * maxConcurrency)

No endpoints = 1.0. Parameters (llm-d's): ``concurrencyMode`` "requests" (llm-d's "tokens"
mode needs a token estimator kvgate does not have: rejected), ``maxConcurrency`` 100 (> 0),
``maxTokenConcurrency`` 1000000 (> 0; only meaningful in tokens mode), ``headroom`` 0.0 (only 0:
llm-d uses it in the detector's filter role, which kvgate does not run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kvgate.errors import PluginParameterError
from kvgate.flowcontrol.saturation import DispatchTracker, TrackedDetector
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Endpoint

TYPE = "concurrency-detector"


def create(name: str, params: Params, ctx: PluginContext) -> ConcurrencyDetector:
    mode = params.get_str("concurrencyMode", "requests")
    if mode != "requests":
        raise PluginParameterError(
            "concurrencyMode", f"expected 'requests' (kvgate has no 'tokens' mode), got {mode!r}"
        )
    limit = params.get_int("maxConcurrency", 100, minimum=1)
    params.get_int("maxTokenConcurrency", 1_000_000, minimum=1)
    if params.get_float("headroom", 0.0, minimum=0.0) != 0.0:
        raise PluginParameterError(
            "headroom", "only 0 is supported (kvgate does not run the detector as a filter)"
        )
    return ConcurrencyDetector(name, limit, DispatchTracker(time.monotonic))


class ConcurrencyDetector(TrackedDetector):
    """See the module docstring."""

    type_name = TYPE

    def __init__(self, name: str, max_concurrency: int, tracker: DispatchTracker) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.tracker = tracker

    def saturation(self, candidates: Sequence[Endpoint], now: float, pending: int = 0) -> float:
        n = len(candidates)
        if n == 0:
            return 1.0
        in_flight = pending
        for endpoint in candidates:
            in_flight += self.tracker.in_flight(endpoint.name)
        return in_flight / (n * self.max_concurrency)
