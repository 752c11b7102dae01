"""``utilization-detector``: llm-d-router's telemetry-driven saturation detector.

Per endpoint, the most constrained resource (a roofline)::

    score = max(waiting / queueDepthThreshold, kvUsage / kvCacheUtilThreshold)

where ``waiting`` also counts dispatches since the endpoint's last scrape (see
kvgate.flowcontrol.saturation). An endpoint with missing or stale metrics scores 1.0. Pool
saturation is the unweighted mean of the scores plus ``pending / (n * queueDepthThreshold)``
for requests admitted but not yet placed; no endpoints = 1.0.

Parameters (llm-d's names and defaults): ``queueDepthThreshold`` 5 (> 0),
``kvCacheUtilThreshold`` 0.8 (in (0, 1]), ``metricsStalenessThreshold`` "200ms" (> 0),
``headroom`` 0.0 (>= 0; llm-d uses it in the detector's scheduling filter, which kvgate does not
run, so only 0 is accepted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kvgate.errors import PluginParameterError
from kvgate.flowcontrol.saturation import DispatchTracker, TrackedDetector
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Endpoint

TYPE = "utilization-detector"


def duration_param(params: Params, key: str, default_s: float) -> float:
    """A Go duration parameter (``"200ms"``) in seconds; must be > 0."""
    from kvgate.config.sections import parse_duration

    raw = params.get_any(key)
    if raw is None:
        return default_s
    parsed = parse_duration(raw) if isinstance(raw, str) else None
    if parsed is None or parsed <= 0:
        raise PluginParameterError(
            key, f"expected a positive duration such as '200ms', got {raw!r}"
        )
    return parsed


def create(name: str, params: Params, ctx: PluginContext) -> UtilizationDetector:
    queue = params.get_int("queueDepthThreshold", 5, minimum=1)
    kv = params.get_float("kvCacheUtilThreshold", 0.8, maximum=1.0)
    if kv <= 0:
        raise PluginParameterError("kvCacheUtilThreshold", f"expected a number in (0, 1], got {kv}")
    staleness = duration_param(params, "metricsStalenessThreshold", 0.2)
    headroom = params.get_float("headroom", 0.0, minimum=0.0)
    if headroom != 0.0:
        raise PluginParameterError(
            "headroom", "only 0 is supported (kvgate does not run the detector as a filter)"
        )
    return UtilizationDetector(name, queue, kv, staleness, DispatchTracker(time.monotonic))


class UtilizationDetector(TrackedDetector):
    """See the module docstring."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        queue_depth_threshold: int,
        kv_cache_util_threshold: float,
        staleness_s: float,
        tracker: DispatchTracker,
    ) -> None:
        self.name = name
        self.queue_depth_threshold = queue_depth_threshold
        self.kv_cache_util_threshold = kv_cache_util_threshold
        self.staleness_s = staleness_s
        self.tracker = tracker

    def saturation(self, candidates: Sequence[Endpoint], now: float, pending: int = 0) -> float:
        n = len(candidates)
        if n == 0:
            return 1.0
        total = 0.0
        for endpoint in candidates:
            m = endpoint.metrics
            if m.updated_at <= 0.0 or now - m.updated_at > self.staleness_s:
                total += 1.0
                continue
            waiting = m.waiting_queue_size + self.tracker.recent(endpoint.name, m.updated_at)
            total += max(
                waiting / self.queue_depth_threshold,
                m.kv_cache_usage_percent / self.kv_cache_util_threshold,
            )
        return (total + pending / self.queue_depth_threshold) / n
