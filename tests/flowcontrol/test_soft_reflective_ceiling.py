"""soft-reflective-ceiling-policy: llm-d's per-band ceilings, and the controller obeying them."""

from __future__ import annotations

import asyncio
import time

import prometheus_client
import pytest

from kvgate.config import load_picker_config
from kvgate.flowcontrol import FlowController, FlowItem
from kvgate.flowcontrol.build import build_flow_controller
from kvgate.flowcontrol.policies.soft_reflective_ceiling import SoftReflectiveCeiling
from kvgate.scheduling.types import Endpoint, Metrics

CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: utilization-detector
  parameters: {queueDepthThreshold: 100, metricsStalenessThreshold: 1h}
- type: soft-reflective-ceiling-policy
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
flowControl:
  saturationDetector: {pluginRef: utilization-detector}
"""


def test_ceilings_reflect_saturation_by_rank() -> None:
    p = SoftReflectiveCeiling()
    assert p.compute_limits(0.9, [7]) == [1.0]  # a lone band is never held
    assert p.compute_limits(0.3, [2, 1, 0]) == [1.0, 1.0, 1.0]  # 0.85 and 0.7 > 0.3
    assert p.compute_limits(1.0, [2, 1, 0]) == [1.0, 0.0, 0.0]
    assert p.calls == 0  # no band alternated yet
    # saturation 0.7, 4 bands: rank 1 (0.77) open; ranks 2 (0.53) and 3 (0.3) alternate
    # together, open on one call in round(0.7 / 0.3) = 2
    assert [p.compute_limits(0.7, [3, 2, 1, 0]) for _ in range(4)] == [
        [1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
    ]


def test_the_open_share_falls_as_saturation_rises() -> None:
    p = SoftReflectiveCeiling()
    assert [p.compute_limits(0.55, [1, 0])[1] for _ in range(3)] == [1.0, 1.0, 1.0]  # period 1
    p = SoftReflectiveCeiling()
    assert [p.compute_limits(0.75, [1, 0])[1] for _ in range(6)] == [0, 0, 1.0, 0, 0, 1.0]


class Pool:
    def __init__(self) -> None:
        self.endpoints = [Endpoint("ep", "127.0.0.1", 8000)]
        self.set(100)

    def set(self, waiting: int) -> None:
        self.endpoints[0].metrics = Metrics(waiting_queue_size=waiting, updated_at=time.monotonic())

    def __call__(self) -> list[Endpoint]:
        return self.endpoints


def _controller(pool: Pool, text: str) -> FlowController:
    fc = build_flow_controller(
        load_picker_config(text=text, env={}),
        pool,
        metrics_registry=prometheus_client.CollectorRegistry(),
    )
    assert fc is not None
    return fc


async def _dispatch_order(fc: FlowController, pool: Pool) -> tuple[list[str], list[str]]:
    """Queue 2 high and 3 low requests while saturated, then drop saturation to 0.7: what
    dispatched at once, and the order all of them dispatched in."""
    order: list[str] = []

    async def run(rid: str, priority: int) -> None:
        await fc.admit(FlowItem(rid, "", priority, 10, "m"))
        order.append(rid)

    names = [("h1", 5), ("h2", 5), ("l1", 0), ("l2", 0), ("l3", 0)]
    tasks = [asyncio.create_task(run(n, p)) for n, p in names]
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == []  # saturation 1.0: all queued
    pool.set(70)
    fc.metrics_refreshed()
    for _ in range(3):
        await asyncio.sleep(0)
    at_once = list(order)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5.0)  # later ticks release the rest
    return at_once, order


@pytest.mark.parametrize("policy", ["soft-reflective-ceiling-policy", None])
async def test_the_controller_holds_a_low_band_at_its_ceiling(policy: str | None) -> None:
    pool = Pool()
    text = CONFIG + (f"  usageLimitPolicyPluginRef: {policy}\n" if policy else "")
    fc = _controller(pool, text)
    await fc.start()
    try:
        at_once, order = await _dispatch_order(fc, pool)
    finally:
        await fc.stop()
    assert order[:2] == ["h1", "h2"] and sorted(order) == ["h1", "h2", "l1", "l2", "l3"]
    if policy is None:  # static-usage-limit-policy: one ceiling, everything below 1.0 goes
        assert at_once == order
    else:  # the low band dispatches on one call in two: some wait for later ticks
        assert at_once[:2] == ["h1", "h2"] and len(at_once) < 5
