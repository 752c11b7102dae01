"""FlowController: order, fairness, capacity, TTL, shedding, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import prometheus_client
import pytest

from kvgate.errors import FlowRejected
from kvgate.flowcontrol import FlowControlConfig, FlowController, FlowItem, PriorityBandConfig
from kvgate.flowcontrol.saturation import ThresholdDetector
from kvgate.scheduling.types import Endpoint, Metrics


class Pool:
    """One real endpoint whose scraped metrics the test sets (saturated or free)."""

    def __init__(self, waiting: int = 0) -> None:
        self.endpoints = [Endpoint("ep", "127.0.0.1", 8000)]
        self.set(waiting)

    def set(self, waiting: int) -> None:
        self.endpoints[0].metrics = Metrics(waiting_queue_size=waiting, updated_at=time.monotonic())

    def __call__(self) -> Sequence[Endpoint]:
        return self.endpoints


def controller(pool: Pool, config: FlowControlConfig | None = None) -> FlowController:
    detector = ThresholdDetector(queue_depth_threshold=1, staleness_s=3600.0)
    return FlowController(
        config or FlowControlConfig(),
        detector,
        pool,
        registry=prometheus_client.CollectorRegistry(),
    )


def item(
    rid: str, *, priority: int = 0, fairness: str = "", size: int = 10, ttl: float | None = None
) -> FlowItem:
    return FlowItem(rid, fairness, priority, size, "m", ttl)


async def queue_all(
    fc: FlowController, items: list[FlowItem], order: list[str]
) -> list[asyncio.Task[float]]:
    async def run(it: FlowItem) -> float:
        waited = await fc.admit(it)
        order.append(it.request_id)
        return waited

    tasks = [asyncio.create_task(run(it)) for it in items]
    for _ in range(3):
        await asyncio.sleep(0)
    return tasks


async def release_one_by_one(fc: FlowController, pool: Pool, order: list[str], n: int) -> None:
    """Free one slot at a time; each dispatched request takes it again."""
    for i in range(n):
        pool.set(0)
        fc.metrics_refreshed()
        await asyncio.sleep(0)
        fc.dispatched("ep")
        pool.set(1)
        deadline = time.monotonic() + 2.0
        while len(order) <= i and time.monotonic() < deadline:
            await asyncio.sleep(0)


def value(fc: FlowController, name: str, **labels: str) -> float:
    got = fc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else float(got)


async def test_fast_path_admits_without_waiting_when_idle() -> None:
    fc = controller(Pool(0))
    assert await fc.admit(item("a")) == 0.0
    assert fc.snapshot()["queued"] == 0


async def test_pending_admits_count_against_capacity_until_dispatched() -> None:
    pool = Pool(0)
    fc = controller(pool)  # one free slot (threshold 1, waiting 0)
    assert await fc.admit(item("a")) == 0.0
    task = asyncio.create_task(fc.admit(item("b")))
    await asyncio.sleep(0)
    assert fc.snapshot()["queued"] == 1  # "a" holds the slot until it is dispatched
    fc.dispatched("ep")  # now counted on the endpoint since its last scrape: still full
    fc.metrics_refreshed()
    assert fc.snapshot()["queued"] == 1
    fc.completed("ep")  # it finished before any scrape saw it: the slot is free again
    assert await task >= 0.0


async def test_bands_dispatch_highest_priority_first() -> None:
    pool = Pool(1)
    fc = controller(pool)
    order: list[str] = []
    await queue_all(
        fc, [item("low", priority=0), item("high", priority=5), item("mid", priority=2)], order
    )
    await release_one_by_one(fc, pool, order, 3)
    assert order == ["high", "mid", "low"]


async def test_fcfs_within_a_flow_and_global_strict_across_flows_by_default() -> None:
    pool = Pool(1)
    fc = controller(pool)
    order: list[str] = []
    await queue_all(
        fc, [item("a1", fairness="a"), item("a2", fairness="a"), item("b1", fairness="b")], order
    )
    await release_one_by_one(fc, pool, order, 3)
    assert order == ["a1", "a2", "b1"]


async def test_round_robin_fairness_rotates_flows() -> None:
    pool = Pool(1)
    band = PriorityBandConfig(fairness_policy="round-robin-fairness-policy")
    fc = controller(pool, FlowControlConfig(default_priority_band=band))
    order: list[str] = []
    items = [
        item("a1", fairness="a"),
        item("a2", fairness="a"),
        item("a3", fairness="a"),
        item("b1", fairness="b"),
        item("b2", fairness="b"),
    ]
    await queue_all(fc, items, order)
    await release_one_by_one(fc, pool, order, 5)
    assert order == ["a1", "b1", "a2", "b2", "a3"]


async def test_edf_orders_by_deadline() -> None:
    pool = Pool(1)
    band = PriorityBandConfig(ordering_policy="edf-ordering-policy")
    fc = controller(pool, FlowControlConfig(default_priority_band=band))
    order: list[str] = []
    await queue_all(
        fc, [item("late", ttl=50.0), item("none", ttl=0.0), item("soon", ttl=10.0)], order
    )
    await release_one_by_one(fc, pool, order, 3)
    assert order == ["soon", "late", "none"]


@pytest.mark.parametrize(
    ("config", "sizes"),
    [
        (FlowControlConfig(max_requests=2), [1, 1, 1]),
        (FlowControlConfig(max_bytes=25), [10, 10, 10]),
        (FlowControlConfig(default_priority_band=PriorityBandConfig(max_requests=2)), [1, 1, 1]),
        (FlowControlConfig(default_priority_band=PriorityBandConfig(max_bytes=25)), [10, 10, 10]),
    ],
    ids=["global-requests", "global-bytes", "band-requests", "band-bytes"],
)
async def test_capacity_rejects_at_once(config: FlowControlConfig, sizes: list[int]) -> None:
    fc = controller(Pool(1), config)
    tasks = [asyncio.create_task(fc.admit(item(f"r{i}", size=s))) for i, s in enumerate(sizes[:2])]
    await asyncio.sleep(0)
    with pytest.raises(FlowRejected) as info:
        await fc.admit(item("over", size=sizes[2]))
    assert (info.value.reason, info.value.status) == ("capacity", 429)
    assert info.value.message == "request rejected pre-queue: queue at capacity"
    assert (
        value(
            fc,
            "inference_extension_flow_control_requests_total",
            outcome="RejectedCapacity",
            priority="0",
            inference_pool="",
        )
        == 1
    )
    await fc.stop()
    for task in tasks:
        with pytest.raises(FlowRejected):
            await task


async def test_ttl_expiry_answers_within_the_ttl() -> None:
    fc = controller(Pool(1))
    start = time.monotonic()
    with pytest.raises(FlowRejected) as info:
        await fc.admit(item("slow", ttl=0.05))
    elapsed = time.monotonic() - start
    assert info.value.reason == "ttl_expired" and info.value.status == 429
    assert info.value.dropped_reason == "rejected-ttl-expired"
    assert 0.03 <= elapsed <= 0.05  # answered by the TTL (the timer is set 10 ms early)
    assert fc.snapshot()["queued"] == 0


async def test_a_band_with_its_own_ttl_waits_by_it_and_the_rest_by_the_section() -> None:
    """llm-d's per-band defaultRequestTTL (the turn-priority guide gives its band 9000s): a
    band's own budget beats the section's; bands without one, and templates, keep the
    section's (a sheddable band would be shed here, not queued, so the band is 1)."""
    config = FlowControlConfig(
        default_request_ttl_s=0.05,
        priority_bands=(PriorityBandConfig(priority=1, request_ttl_s=0.2),),
    )
    fc = controller(Pool(1), config)
    started = time.monotonic()

    async def expiry(it: FlowItem) -> float:
        with pytest.raises(FlowRejected) as info:
            await fc.admit(it)
        assert info.value.reason == "ttl_expired"
        return time.monotonic() - started

    band_wait, section_wait = await asyncio.gather(
        expiry(item("session", priority=1)), expiry(item("plain", priority=0))
    )
    assert 0.15 <= band_wait <= 0.3 and 0.03 <= section_wait <= 0.1
    assert config.ttl_s(pool_empty=False, band=config.band(5)) == 0.05  # template: section's


async def test_ttl_with_an_empty_pool_is_503() -> None:
    pool = Pool(0)
    pool.endpoints = []
    fc = controller(pool)
    with pytest.raises(FlowRejected) as info:
        await fc.admit(item("x", ttl=0.02))
    assert info.value.status == 503


async def test_sheddable_is_shed_when_saturated_and_admitted_when_not() -> None:
    pool = Pool(1)
    fc = controller(pool)
    with pytest.raises(FlowRejected) as info:
        await fc.admit(item("s", priority=-1))
    assert (info.value.reason, info.value.status) == ("shed", 429)
    assert info.value.message == "system saturated, sheddable request dropped"
    pool.set(0)
    assert await fc.admit(item("s2", priority=-1)) == 0.0


async def test_cancellation_removes_and_counts() -> None:
    fc = controller(Pool(1))
    task = asyncio.create_task(fc.admit(item("gone", size=7)))
    await asyncio.sleep(0)
    assert fc.snapshot()["queued_bytes"] == 7
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fc.snapshot()["queued"] == 0 and fc.snapshot()["queued_bytes"] == 0
    assert (
        value(
            fc,
            "inference_extension_flow_control_requests_total",
            outcome="EvictedContextCancelled",
            priority="0",
            inference_pool="",
        )
        == 1
    )
    assert (
        value(
            fc,
            "inference_extension_flow_control_queue_size",
            fairness_id="default-flow",
            priority="0",
            inference_pool="",
            model_name="m",
            target_model_name="",
        )
        == 0
    )


async def test_stop_rejects_queued_with_shutdown() -> None:
    fc = controller(Pool(1))
    task = asyncio.create_task(fc.admit(item("q")))
    await asyncio.sleep(0)
    await fc.stop()
    with pytest.raises(FlowRejected) as info:
        await task
    assert (info.value.reason, info.value.status) == ("shutdown", 503)
    with pytest.raises(FlowRejected):
        await fc.admit(item("after"))


async def test_queue_wait_is_measured_and_saturation_exported() -> None:
    pool = Pool(1)
    fc = controller(pool)
    task = asyncio.create_task(fc.admit(item("w")))
    await asyncio.sleep(0.02)
    assert value(fc, "inference_extension_flow_control_pool_saturation", inference_pool="") == 1.0
    pool.set(0)
    fc.metrics_refreshed()
    assert await task >= 0.02
    assert fc.snapshot()["saturated"] is False
