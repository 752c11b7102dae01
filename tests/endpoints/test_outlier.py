"""The per-endpoint circuit breaker and the ejection floor, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from kvgate.endpoints.outlier import OutlierConfig, OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ep:
    name: str


def make(
    hosts: int = 10, registry: CollectorRegistry | None = None, **kw: object
) -> tuple[OutlierDetector, Clock]:
    cfg = OutlierConfig(
        **{  # type: ignore[arg-type]
            "consecutive_failures": 3,
            "base_ejection_s": 10.0,
            "max_ejection_s": 25.0,
            "max_ejection_percent": 50,
            "min_hosts": 1,
            "half_open_probes": 1,
            **kw,
        }
    )
    clock = Clock()
    det = OutlierDetector(cfg, clock=clock, registry=registry)
    det.attach(lambda: hosts)
    return det, clock


def fail(det: OutlierDetector, name: str, n: int, outcome: str = "5xx") -> None:
    for _ in range(n):
        det.record(name, outcome)  # type: ignore[arg-type]


def test_defaults_follow_envoy() -> None:
    cfg = OutlierConfig()
    assert (cfg.consecutive_failures, cfg.base_ejection_s, cfg.max_ejection_s) == (5, 30.0, 300.0)
    assert (cfg.max_ejection_percent, cfg.min_hosts, cfg.half_open_probes) == (10, 1, 1)
    assert cfg.enabled and cfg.failure_outcomes == {"5xx", "connect", "timeout"}


def test_opens_after_consecutive_failures_and_success_resets_the_count() -> None:
    det, _ = make()
    fail(det, "a", 2)
    det.record("a", "success")
    fail(det, "a", 2)
    assert det.allows("a") and det.ejected() == frozenset()
    det.record("a", "connect")
    assert not det.allows("a")
    assert det.ejected() == {"a"}
    assert det.snapshot()["endpoints"]["a"]["state"] == "open"


def test_half_open_after_ejection_time_admits_bounded_probes() -> None:
    det, clock = make(half_open_probes=2)
    fail(det, "a", 3)
    clock.now += 9.99
    assert not det.allows("a")
    clock.now += 0.01
    assert det.allows("a")
    assert det.snapshot()["endpoints"]["a"]["state"] == "half_open"
    det.started("a")
    assert det.allows("a")
    det.started("a")
    assert not det.allows("a")  # both probe slots taken
    det.cancelled("a")
    assert det.allows("a")


def test_probe_success_closes_failure_reopens_longer_capped() -> None:
    det, clock = make()
    fail(det, "a", 3)  # 1st ejection: 10 s
    clock.now += 10
    det.started("a")
    det.record("a", "timeout")  # probe fails: 2nd ejection, 20 s
    snap = det.snapshot()["endpoints"]["a"]
    assert snap["state"] == "open" and snap["ejected_for_s"] == pytest.approx(20)
    clock.now += 20
    det.started("a")
    det.record("a", "5xx")  # 3rd: 30 s capped at 25 s
    assert det.snapshot()["endpoints"]["a"]["ejected_for_s"] == pytest.approx(25)
    clock.now += 25
    det.started("a")
    det.record("a", "success")
    assert det.allows("a") and det.ejected() == frozenset()
    assert det.snapshot()["endpoints"]["a"]["state"] == "closed"


def test_multiplier_decays_while_closed() -> None:
    det, clock = make()
    fail(det, "a", 3)
    clock.now += 10
    det.record("a", "5xx")  # probe fails: multiplier 2
    clock.now += 20
    det.record("a", "success")  # closed; multiplier 2
    clock.now += 10  # one base period healthy: multiplier back to 1
    fail(det, "a", 3)
    assert det.snapshot()["endpoints"]["a"]["ejected_for_s"] == pytest.approx(20)


def test_outcomes_not_counted_are_ignored() -> None:
    det, _ = make(failure_outcomes=frozenset({"5xx", "connect"}))
    fail(det, "a", 10, "timeout")
    assert det.allows("a")


def test_disabled_never_ejects() -> None:
    det, _ = make(enabled=False)
    fail(det, "a", 50)
    assert det.allows("a") and not det.any_out and det.snapshot()["endpoints"] == {}


def test_floor_by_percent_first_ejection_always_allowed() -> None:
    det, _ = make(hosts=10, max_ejection_percent=10)
    fail(det, "a", 3)
    fail(det, "b", 3)  # 1 of 10 out = 10 %: not below 10 %, refused
    assert det.ejected() == {"a"}
    assert det.allows("b")
    det2, _ = make(hosts=10, max_ejection_percent=0)
    fail(det2, "a", 3)  # Envoy: with none out, the first ejection happens whatever the percent
    assert det2.ejected() == {"a"}
    det3, _ = make(hosts=10, max_ejection_percent=20)
    for name in "abc":
        fail(det3, name, 3)
    assert det3.ejected() == {"a", "b"}


def test_floor_by_min_hosts() -> None:
    det, _ = make(hosts=2, max_ejection_percent=100, min_hosts=1)
    fail(det, "a", 3)
    fail(det, "b", 3)
    assert det.ejected() == {"a"}
    lone, _ = make(hosts=1, min_hosts=1)
    fail(lone, "a", 30)
    assert lone.ejected() == frozenset()


def test_filter_readmits_to_min_hosts_when_rotation_shrinks() -> None:
    det, clock = make(hosts=3, max_ejection_percent=100, min_hosts=1)
    fail(det, "a", 3)
    clock.now += 1
    fail(det, "b", 3)
    a, b, c = Ep("a"), Ep("b"), Ep("c")
    assert det.filter([a, b, c]) == [c]
    # c left rotation (failed scrapes): the one returning soonest (a) is readmitted
    assert det.filter([a, b]) == [a]
    assert det.filter([]) == []


def test_forget_drops_state_and_series() -> None:
    reg = CollectorRegistry()
    det, _ = make(registry=reg)
    fail(det, "a", 3)
    assert reg.get_sample_value(
        "kvgate_outlier_ejections_total", {"endpoint": "a", "reason": "consecutive_failures"}
    ) == (1.0)
    det.forget("a")
    assert det.ejected() == frozenset() and det.allows("a")
    assert (
        reg.get_sample_value(
            "kvgate_outlier_ejections_total", {"endpoint": "a", "reason": "consecutive_failures"}
        )
        is None
    )
    assert reg.get_sample_value("kvgate_outlier_breaker_state", {"endpoint": "a"}) is None


def test_metrics_read_back() -> None:
    reg = CollectorRegistry()
    det, clock = make(hosts=2, registry=reg, max_ejection_percent=100)

    def state(name: str) -> float | None:
        return reg.get_sample_value("kvgate_outlier_breaker_state", {"endpoint": name})

    def count(metric: str, name: str, reason: str) -> float | None:
        return reg.get_sample_value(metric, {"endpoint": name, "reason": reason})

    det.record("a", "success")
    assert state("a") == 0
    fail(det, "a", 3)
    assert state("a") == 1
    fail(det, "b", 3)  # min_hosts keeps b in
    assert count("kvgate_outlier_ejections_skipped_total", "b", "min_hosts") == 1
    assert state("b") == 0
    clock.now += 10
    assert state("a") == 2  # half-open, seen at scrape time
    det.record("a", "5xx")
    assert count("kvgate_outlier_ejections_total", "a", "consecutive_failures") == 1
    assert count("kvgate_outlier_ejections_total", "a", "probe_failed") == 1
    assert state("a") == 1


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="consecutive_failures: expected >= 1, got 0"):
        OutlierConfig(consecutive_failures=0)
    with pytest.raises(ValueError, match=r"max_ejection_s: expected >= base_ejection_s"):
        OutlierConfig(base_ejection_s=30, max_ejection_s=10)
    with pytest.raises(ValueError, match="failure_outcomes"):
        OutlierConfig(failure_outcomes=frozenset({"4xx"}))
    det, _ = make()
    with pytest.raises(ValueError, match="outcome: expected one of"):
        det.record("a", "4xx")  # type: ignore[arg-type]
