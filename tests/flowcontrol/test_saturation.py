"""Saturation detectors: staleness, thresholds, the dispatched-since-scrape guard."""

from __future__ import annotations

from kvgate.flowcontrol.detectors.concurrency import ConcurrencyDetector
from kvgate.flowcontrol.detectors.utilization import UtilizationDetector
from kvgate.flowcontrol.saturation import DispatchTracker, SaturationDetector, ThresholdDetector
from kvgate.scheduling.types import Endpoint, Metrics

NOW = 100.0


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def endpoint(name: str, *, waiting: int = 0, kv: float = 0.0, age_s: float = 0.0) -> Endpoint:
    metrics = Metrics(waiting_queue_size=waiting, kv_cache_usage_percent=kv, updated_at=NOW - age_s)
    return Endpoint(name, "127.0.0.1", 8000, metrics=metrics)


def threshold(clock: FakeClock) -> ThresholdDetector:
    return ThresholdDetector(5, 0.8, 0.2, tracker=DispatchTracker(clock))


def test_detectors_satisfy_the_protocol() -> None:
    clock = FakeClock()
    for d in (
        threshold(clock),
        UtilizationDetector("u", 5, 0.8, 0.2, DispatchTracker(clock)),
        ConcurrencyDetector("c", 2, DispatchTracker(clock)),
    ):
        assert isinstance(d, SaturationDetector)
        assert d.is_saturated([], NOW)  # no endpoints = saturated


def test_stale_metrics_saturate() -> None:
    d = threshold(FakeClock())
    assert not d.is_saturated([endpoint("a", age_s=0.19)], NOW)
    assert d.is_saturated([endpoint("a", age_s=0.21)], NOW)
    assert d.is_saturated([Endpoint("never", "127.0.0.1", 1)], NOW)


def test_fresh_metrics_over_thresholds_saturate_and_one_free_endpoint_suffices() -> None:
    d = threshold(FakeClock())
    assert d.is_saturated([endpoint("a", waiting=5)], NOW)
    assert d.is_saturated([endpoint("a", kv=0.8)], NOW)
    assert not d.is_saturated([endpoint("a", waiting=9), endpoint("b", waiting=4)], NOW)


def test_dispatches_since_the_last_scrape_count_until_a_newer_scrape() -> None:
    clock = FakeClock()
    d = threshold(clock)
    pool = [endpoint("a", waiting=3)]
    clock.now = NOW + 0.01  # after the scrape
    d.on_dispatched("a")
    assert not d.is_saturated(pool, clock.now)
    d.on_dispatched("a")  # 3 scraped + 2 since the scrape = 5 = threshold
    assert d.is_saturated(pool, clock.now)
    d.on_completed("a")  # finished before any scrape saw it
    assert not d.is_saturated(pool, clock.now)
    pool[0].metrics = Metrics(waiting_queue_size=4, updated_at=NOW + 0.02)  # includes the rest
    assert d.tracker.recent("a", NOW + 0.02) == 0
    assert not d.is_saturated(pool, clock.now)


def test_pending_needs_that_much_headroom() -> None:
    d = threshold(FakeClock())
    pool = [endpoint("a", waiting=3), endpoint("b", waiting=4)]  # 2 + 1 free slots
    assert d.saturation(pool, NOW, pending=2) == 0.0
    assert d.saturation(pool, NOW, pending=3) == 1.0


def test_utilization_detector_is_the_mean_roofline() -> None:
    d = UtilizationDetector("u", 5, 0.8, 0.2, DispatchTracker(FakeClock()))
    pool = [endpoint("a", waiting=5), endpoint("b", kv=0.4), endpoint("c", age_s=1.0)]
    assert abs(d.saturation(pool, NOW) - (1.0 + 0.5 + 1.0) / 3) < 1e-9
    assert d.saturation([endpoint("a")], NOW, pending=5) == 1.0


def test_concurrency_detector_counts_in_flight() -> None:
    d = ConcurrencyDetector("c", 2, DispatchTracker(FakeClock()))
    pool = [endpoint("a"), endpoint("b")]
    for _ in range(3):
        d.on_dispatched("a")
    assert d.saturation(pool, NOW) == 0.75
    d.on_dispatched("b")
    assert d.is_saturated(pool, NOW)
    d.on_completed("a")
    assert not d.is_saturated(pool, NOW)
