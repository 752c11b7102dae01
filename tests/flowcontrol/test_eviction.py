"""In-flight eviction: who is evicted, how many, and when the next decision may run."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client

from kvgate.flowcontrol.eviction import InFlightEviction


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Track = Callable[[str, int], None]


def _eviction(
    clock: Clock,
) -> tuple[InFlightEviction, Track, list[str], prometheus_client.CollectorRegistry]:
    """An eviction under ``clock``; ``track(rid, priority)`` dispatches one a second apart."""
    registry = prometheus_client.CollectorRegistry()
    evicted: list[str] = []
    eviction = InFlightEviction(registry=registry, pool="pool", clock=clock)

    def track(rid: str, priority: int) -> None:
        eviction.track(rid, priority, lambda: evicted.append(rid))
        clock.now += 1

    return eviction, track, evicted, registry


def test_lowest_priority_then_newest_sheddable_goes_first_and_only_below_the_demand() -> None:
    clock = Clock()
    eviction, track, evicted, registry = _eviction(clock)
    for rid, priority in (("old-1", -1), ("new-1", -1), ("old-2", -2), ("keep", 0), ("new-2", -2)):
        track(rid, priority)
    # a band at or below the victim's priority is no demand; an unblocked or empty one neither
    assert eviction.reclaim(1.0, [(-2, 1.0, True)]) == []
    assert eviction.reclaim(1.0, [(5, 1.0, False), (1, 1.5, True), (0, 0.0, True)]) == []
    # saturation 1.0 over 5 in flight: credit 0.2, deficit 0 -> one revocation, the newest -2
    assert eviction.reclaim(1.0, [(1, 1.0, True)]) == ["new-2"]
    assert evicted == ["new-2"]
    # stop-and-wait: nothing more until it is confirmed and the grace has passed
    assert eviction.reclaim(1.0, [(1, 1.0, True)]) == []
    eviction.untrack("new-2")
    assert eviction.reclaim(1.0, [(1, 1.0, True)]) == []
    clock.now += 0.5
    # deficit 0.5 at credit 0.25 -> 2 (llm-d's cap per decision); only below the bound (-1)
    assert eviction.reclaim(1.5, [(1, 1.0, True)]) == ["old-2", "new-1"]
    for rid in ("old-2", "new-1"):
        eviction.untrack(rid)
    clock.now += 0.5
    # the demand band's priority bounds the victims: -1 is not below -1
    assert eviction.reclaim(1.0, [(-1, 1.0, True)]) == []
    # a priority-0 request is never evictable
    assert eviction.reclaim(1.0, [(1, 1.0, True)]) == ["old-1"]
    eviction.untrack("old-1")
    clock.now += 0.5
    assert eviction.reclaim(1.0, [(1, 1.0, True)]) == []
    assert (
        registry.get_sample_value(
            "llm_d_epp_flow_control_revocations_issued_total",
            {"priority": "1", "inference_pool": "pool"},
        )
        == 4.0
    )
    assert (
        registry.get_sample_value(
            "llm_d_epp_flow_control_revocations_total",
            {"outcome": "confirmed", "inference_pool": "pool"},
        )
        == 4.0
    )


def test_an_unconfirmed_revocation_times_out() -> None:
    clock = Clock()
    eviction, track, evicted, registry = _eviction(clock)
    track("a", -1)
    track("b", -1)
    assert eviction.reclaim(1.0, [(0, 1.0, True)]) == ["b"]
    clock.now += 9.9
    assert eviction.reclaim(1.0, [(0, 1.0, True)]) == []
    clock.now += 0.1  # 10 s: counted as ended, then 0.5 s of grace
    assert eviction.reclaim(1.0, [(0, 1.0, True)]) == []
    clock.now += 0.5
    assert eviction.reclaim(1.0, [(0, 1.0, True)]) == ["a"]
    assert (
        registry.get_sample_value(
            "llm_d_epp_flow_control_revocations_total",
            {"outcome": "timed_out", "inference_pool": "pool"},
        )
        == 1.0
    )
    assert evicted == ["b", "a"]
