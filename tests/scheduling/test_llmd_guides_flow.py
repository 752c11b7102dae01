"""The flow-control sections of llm-d's guide configs (their scheduling profiles, queue 2 +
kv 2 + prefix 3, are checked in test_llmd_guides.py): which queued request the configured
policies dispatch next, against llm-d-router's documented semantics.

* flow-control: bands 100 / 0 / -10, round-robin across flows, FCFS within one, a
  concurrency-detector of 132 requests; a sheddable (< 0) request is shed while saturated.
* agentic-serving-gpu-program-aware: program-aware-fairness (LAS): the non-empty flow with the
  highest ``0.8 · (1 − norm(service)) + 0.2 · norm(head wait)`` goes first, service being the
  program's ``prompt + 2 · completion`` tokens (min-max norm over the waiting flows).
* turn-priority-fairness: program-aware-fairness ``turn-priority`` in band -1: the highest
  ``turn + 0.05 · head wait (s)`` goes first, turn = the program's dispatches so far + 1.

Saturation comes from the guides' concurrency detectors: requests are reported dispatched up
to the limit, and each completion frees one slot.
"""

from __future__ import annotations

import asyncio
import random
import time

import prometheus_client
import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.errors import FlowRejected
from kvgate.flowcontrol import FlowController, FlowItem
from kvgate.flowcontrol.build import build_flow_controller
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import HEADER_FAIRNESS_ID, Endpoint, Metrics, Request, ResponseInfo
from scheduling.guide_kit import guide

EP = Endpoint("ep", "10.0.0.1", 8000, {}, Metrics(updated_at=time.monotonic()))


def _build(name: str) -> tuple[Scheduler, FlowController]:
    config = load_picker_config(guide(name), env={})
    sched = build_scheduler(config, PluginContext(rng=random.Random(3)))
    fc = build_flow_controller(config, lambda: [EP], plugins=sched.plugins,
                               metrics_registry=prometheus_client.CollectorRegistry())  # fmt: skip
    assert fc is not None
    return sched, fc


def _served(sched: Scheduler, program: str, prompt: int, completion: int) -> None:
    """One finished request of ``program``, through the scheduler's hooks."""
    request = Request(f"{program}-done", "m", prompt="hi", headers={HEADER_FAIRNESS_ID: program})
    sched.pre_request(request, sched.schedule(request, [EP]))
    sched.response_complete(request, ResponseInfo(200, None, prompt, completion), EP)


async def _order(
    fc: FlowController, items: list[FlowItem], in_flight: int, first: FlowItem | None = None
) -> list[str]:
    """Hold ``in_flight`` requests on EP (and admit ``first`` at once, pending), queue
    ``items``, then free one slot at a time."""
    for _ in range(in_flight):
        fc.dispatched("ep")
    if first is not None:
        assert fc.try_admit(first)
    order: list[str] = []

    async def run(item: FlowItem) -> None:
        await fc.admit(item)
        order.append(item.request_id)
        fc.dispatched("ep")

    tasks = [asyncio.create_task(run(item)) for item in items]
    await asyncio.sleep(0)
    assert order == []  # saturated: everything queues
    if first is not None:
        fc.dispatched("ep")  # first is now in flight
    for i in range(len(items)):
        fc.completed("ep")
        deadline = time.monotonic() + 2.0
        while len(order) <= i and time.monotonic() < deadline:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=2.0)
    return order


async def test_program_aware_fairness() -> None:
    sched, fc = _build("agentic-serving_router_agentic-serving-gpu-program-aware")
    _served(sched, "a", 100, 100)  # service 100 + 2·100 = 300
    _served(sched, "c", 50, 50)  # 150
    items = [FlowItem(r, r[0], 0, 10, "m") for r in ("a1", "c1", "b1", "a2")]
    # waiting a (300), b (0), c (150): b scores 0.8 + 0.2·wait ≥ 0.8 > c's ≤ 0.6 > a's ≤ 0.2;
    # then c (norm 0) before a (norm 1), whatever the head waits
    assert await _order(fc, items, 133) == ["b1", "c1", "a1", "a2"]


async def test_turn_priority() -> None:
    sched, fc = _build("turn-priority-fairness_router_turn-priority-fairness")
    for _ in range(5):  # five turns of session "deep" already served
        _served(sched, "deep", 10, 10)
    # band -1 is sheddable: it queues while the pending dispatch, not the in-flight ones,
    # fills the 32 slots; one request goes at once, the rest queue behind it
    first = FlowItem("first", "other", -1, 10, "m")
    items = [FlowItem("new1", "new", -1, 10, "m"), FlowItem("new2", "new", -1, 10, "m"),
             FlowItem("deep6", "deep", -1, 10, "m")]  # fmt: skip
    # turn 6 (+ wait) beats turn 1 (+ a longer wait of microseconds · 0.05)
    assert await _order(fc, items, 31, first) == ["deep6", "new1", "new2"]


async def test_priority_bands_round_robin_fcfs() -> None:
    _, fc = _build("flow-control_router_flow-control")
    items = [FlowItem("lo-a1", "a", 0, 10, "m"), FlowItem("lo-a2", "a", 0, 10, "m"),
             FlowItem("lo-b1", "b", 0, 10, "m"), FlowItem("hi-a1", "a", 100, 10, "m")]  # fmt: skip
    order = await _order(fc, items, 132)
    # band 100 first; band 0 round-robin over a and b, a's two in arrival order
    assert order[0] == "hi-a1" and set(order[1:3]) == {"lo-a1", "lo-b1"} and order[3] == "lo-a2"
    # saturated again: a sheddable (band -10) request is shed, not queued
    with pytest.raises(FlowRejected) as err:
        fc.try_admit(FlowItem("shed", "a", -10, 10, "m"))
    assert err.value.reason == "shed"
