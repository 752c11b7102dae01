"""program-aware-fairness: least attained service first, charged from finished requests."""

from __future__ import annotations

import asyncio
import time

import prometheus_client
import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.errors import PluginParameterError
from kvgate.flowcontrol import FlowController, FlowItem
from kvgate.flowcontrol.build import build_flow_controller
from kvgate.scheduling.types import Endpoint, Metrics, ResponseInfo
from plugins.kit import FakeClock, ctx, make, request

TYPE = "program-aware-fairness"
CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: program-aware-fairness
- type: queue-scorer
- type: utilization-detector
  parameters: {queueDepthThreshold: 1, metricsStalenessThreshold: 1h}
flowControl:
  saturationDetector: {pluginRef: utilization-detector}
  defaultPriorityBand:
    fairnessPolicyRef: FAIRNESS
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""
EP = Endpoint("ep", "127.0.0.1", 8000)


def _finished(plugin: object, program: str, prompt: int, completion: int) -> None:
    req = request(headers={"x-gateway-inference-fairness-id": program})
    info = ResponseInfo(status=200, prompt_tokens=prompt, completion_tokens=completion)
    plugin.response_complete(req, info, EP)  # type: ignore[attr-defined]


def test_service_is_weighted_tokens_decayed_by_the_half_life() -> None:
    clock = FakeClock()
    p = make(TYPE, {"lasHalfLifeSeconds": 10}, c=ctx(clock=clock))
    _finished(p, "a", 100, 50)  # 100 + 2 * 50
    assert p.service("a") == 200.0 and p.service("b") == 0.0
    clock.advance(10)
    assert p.service("a") == pytest.approx(100.0)
    _finished(p, "a", 10, 0)
    clock.advance(20)
    assert p.service("a") == pytest.approx(110.0 / 4)
    # the llm-d header name counts too; no header is llm-d's default flow
    llmd = request(headers={"x-llm-d-inference-fairness-id": "c"})
    p.response_complete(llmd, ResponseInfo(status=200, prompt_tokens=1), EP)
    p.response_complete(request(), ResponseInfo(status=200, completion_tokens=1), EP)
    assert p.service("c") == 1.0 and p.service("default-flow") == 2.0


def test_idle_programs_are_forgotten_after_the_ttl() -> None:
    clock = FakeClock()
    p = make(TYPE, {"evictionTtlSeconds": 100, "evictionSweepSeconds": 10}, c=ctx(clock=clock))
    _finished(p, "a", 1, 1)
    clock.advance(101)
    p._sweep(clock())
    assert "a" not in p.programs


def test_turn_priority_counts_dispatches_and_resets_after_inactivity() -> None:
    clock = FakeClock()
    p = make(TYPE, {"strategy": "turn-priority"}, c=ctx(clock=clock))
    req = request(headers={"x-gateway-inference-fairness-id": "s"})
    assert p.turn("s", clock()) == 1
    for _ in range(3):
        p.pre_request(req, None, {})
        _finished(p, "s", 1, 1)
    assert p.turn("s", clock()) == 4
    assert p.turn("s", clock() + 121) == 1  # dormant longer than 120 s: turn one again
    off = make(TYPE, {"strategy": "turn-priority", "turnPriorityInactivitySeconds": 0})
    off.pre_request(req, None, {})
    assert off.turn("s", off.clock() + 10_000) == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"strategy": "wfq"}, "strategy"),
        ({"turnPriorityTimeWeight": -1}, "turnPriorityTimeWeight"),
        ({"lasWeightService": -1}, "lasWeightService"),
        ({"evictionSweepSeconds": 0}, "evictionSweepSeconds"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, params)
    assert err.value.field == field


class Pool:
    def __init__(self) -> None:
        self.endpoints = [EP]
        self.set(1)

    def set(self, waiting: int) -> None:
        EP.metrics = Metrics(waiting_queue_size=waiting, updated_at=time.monotonic())

    def __call__(self) -> list[Endpoint]:
        return self.endpoints


async def _order(fc: FlowController, pool: Pool, items: list[tuple[str, str]]) -> list[str]:
    """Queue ``(request id, program)`` while saturated, then free one slot at a time."""
    order: list[str] = []

    async def run(rid: str, program: str) -> None:
        await fc.admit(FlowItem(rid, program, 0, 10, "m"))
        order.append(rid)

    tasks = [asyncio.create_task(run(r, p)) for r, p in items]
    for _ in range(3):
        await asyncio.sleep(0)
    for i in range(len(items)):
        pool.set(0)
        fc.metrics_refreshed()
        fc.dispatched("ep")
        pool.set(1)
        deadline = time.monotonic() + 2.0
        while len(order) <= i and time.monotonic() < deadline:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=2.0)
    return order


async def test_turn_priority_dispatches_the_deepest_session_first() -> None:
    text = CONFIG.replace("FAIRNESS", TYPE).replace(
        "- type: program-aware-fairness\n",
        "- type: program-aware-fairness\n  parameters: {strategy: turn-priority}\n",
    )
    config = load_picker_config(text=text, env={})
    scheduler = build_scheduler(config)
    pool = Pool()
    fc = build_flow_controller(
        config, pool, metrics_registry=prometheus_client.CollectorRegistry(),
        plugins=scheduler.plugins,
    )  # fmt: skip
    assert fc is not None
    deep = request(headers={"x-gateway-inference-fairness-id": "deep"})
    for _ in range(5):  # five turns already served
        result = scheduler.schedule(deep, [EP])
        scheduler.pre_request(deep, result)
        scheduler.response_complete(deep, ResponseInfo(200, None, 10, 10), EP)
    order = await _order(fc, pool, [("new1", "new"), ("new2", "new"), ("deep6", "deep")])
    assert order == ["deep6", "new1", "new2"]


@pytest.mark.parametrize("fairness", [TYPE, "global-strict-fairness-policy"])
async def test_the_least_served_program_dispatches_first(fairness: str) -> None:
    config = load_picker_config(text=CONFIG.replace("FAIRNESS", fairness), env={})
    scheduler = build_scheduler(config)
    pool = Pool()
    fc = build_flow_controller(
        config,
        pool,
        metrics_registry=prometheus_client.CollectorRegistry(),
        plugins=scheduler.plugins,
    )
    assert fc is not None
    # program "a" has used 300 weighted tokens; the scheduler's hook charged the instance
    # the flow controller picks with
    req = request(headers={"x-gateway-inference-fairness-id": "a"})
    scheduler.response_complete(req, ResponseInfo(200, None, 100, 100), EP)
    order = await _order(fc, pool, [("a1", "a"), ("a2", "a"), ("b1", "b")])
    if fairness == TYPE:
        assert order == ["b1", "a1", "a2"]
    else:  # global strict: the oldest head first
        assert order == ["a1", "a2", "b1"]
