"""The endpoint pool with an outlier detector: candidates leave ejected endpoints out."""

from __future__ import annotations

from kvgate.endpoints.outlier import OutlierConfig, OutlierDetector
from kvgate.endpoints.pool import EndpointPool, EndpointSpec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pool_of(n: int, **kw: object) -> tuple[EndpointPool, OutlierDetector, Clock]:
    clock = Clock()
    cfg = OutlierConfig(consecutive_failures=2, base_ejection_s=5, **kw)  # type: ignore[arg-type]
    det = OutlierDetector(cfg, clock=clock)
    pool = EndpointPool(outlier=det)
    for i in range(n):
        pool.upsert(EndpointSpec(name=f"e{i}", address="127.0.0.1", port=9000 + i), healthy=True)
    return pool, det, clock


def names(pool: EndpointPool) -> list[str]:
    return [e.name for e in pool.candidates()]


def test_without_detector_unchanged() -> None:
    pool = EndpointPool()
    pool.upsert(EndpointSpec(name="a", address="127.0.0.1", port=1), healthy=True)
    pool.upsert(EndpointSpec(name="b", address="127.0.0.1", port=2))
    assert [e.name for e in pool.candidates()] == ["a"]


def test_ejected_endpoint_leaves_candidates_and_returns_half_open() -> None:
    pool, det, clock = pool_of(3, max_ejection_percent=50)
    det.record("e1", "5xx")
    det.record("e1", "5xx")
    assert names(pool) == ["e0", "e2"]
    clock.now += 5
    assert names(pool) == ["e0", "e1", "e2"]  # half-open: a probe slot is free
    det.started("e1")
    assert names(pool) == ["e0", "e2"]
    det.record("e1", "success")
    assert names(pool) == ["e0", "e1", "e2"]


def test_floor_uses_the_pools_healthy_count() -> None:
    pool, det, _ = pool_of(4, max_ejection_percent=25)
    pool.upsert(EndpointSpec(name="sick", address="127.0.0.1", port=1))  # not healthy: not counted
    for name in ("e0", "e1"):
        det.record(name, "5xx")
        det.record(name, "5xx")
    assert names(pool) == ["e1", "e2", "e3"]  # 1 of 4 out = 25 %: the second is refused
    pool2, det2, _ = pool_of(2, max_ejection_percent=100)
    for name in ("e0", "e1"):
        det2.record(name, "connect")
        det2.record(name, "connect")
    assert names(pool2) == ["e1"]  # min_hosts 1


def test_min_hosts_readmits_when_the_rest_turns_unhealthy() -> None:
    pool, det, _ = pool_of(2)
    det.record("e0", "5xx")
    det.record("e0", "5xx")
    assert names(pool) == ["e1"]
    pool.set_healthy("e1", False)
    assert names(pool) == ["e0"]


def test_removed_endpoint_is_forgotten() -> None:
    pool, det, _ = pool_of(3)
    det.record("e2", "5xx")
    det.record("e2", "5xx")
    assert det.ejected() == {"e2"}
    pool.remove(["e2"])
    assert det.ejected() == frozenset() and "e2" not in det.snapshot()["endpoints"]
    pool.upsert(EndpointSpec(name="e2", address="127.0.0.1", port=9002), healthy=True)
    assert names(pool) == ["e0", "e1", "e2"]


def test_set_outlier_after_construction() -> None:
    pool = EndpointPool()
    for i in range(2):
        pool.upsert(EndpointSpec(name=f"e{i}", address="127.0.0.1", port=9000 + i), healthy=True)
    det = OutlierDetector(OutlierConfig(consecutive_failures=1), clock=Clock())
    pool.set_outlier(det)
    det.record("e0", "5xx")
    det.record("e1", "5xx")  # the pool's 2 healthy endpoints are the floor's base: refused
    assert names(pool) == ["e1"]
