"""DashboardState with real parts: a config-built scheduler, a real pool and RequestControl;
requests go through the request path and reach the state through its one on_finish hook."""

from __future__ import annotations

import json
import logging
import random
import time
from bisect import bisect_left
from typing import Any

import pytest

from kvgate.config import build_scheduler, load_picker_config, policy_config_text
from kvgate.dashboard.state import LATENCY_EDGES_S, DashboardState, quantile_s
from kvgate.endpoints.outlier import OutlierConfig
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol.build import build_request_control
from kvgate.requestcontrol.control import RequestContext, RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.scheduling.types import Metrics, ResponseInfo

FLOW = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


def make_control(config_text: str | None = None, **kw: Any) -> RequestControl:
    """ep0 idle, ep1 with a queue, ep2 unhealthy; llm-d-default unless told."""
    config = load_picker_config(text=config_text or policy_config_text("llm-d-default"))
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    pool = EndpointPool()
    for i in range(3):
        name = f"ep{i}"
        pool.upsert(EndpointSpec(name, "127.0.0.1", 8000 + i), healthy=i < 2)
        pool.update_metrics(
            name,
            Metrics(waiting_queue_size=i, kv_cache_usage_percent=0.25, updated_at=time.monotonic()),
        )
    return build_request_control(
        pool, scheduler, RequestMetrics(pool), config, log_requests=False, **kw
    )


async def serve_one(
    control: RequestControl, prompt: str = "hello", **usage: int | None
) -> RequestContext:
    """One completions request along the whole path, as a front door drives it."""
    ctx = control.begin("gateway", "/v1/completions")
    control.started(ctx)
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    control.parse(ctx, "completions", body, {})
    result = await control.route(ctx)
    control.start_attempt(ctx, result.target)
    info = ResponseInfo(status=200)
    info.prompt_tokens = usage.get("prompt_tokens")
    info.cached_tokens = usage.get("cached_tokens")
    info.completion_tokens = usage.get("completion_tokens")
    control.end_attempt(ctx, info)
    control.finish(ctx, 200)
    return ctx


def requests_total(control: RequestControl) -> float:
    return sum(
        s.value
        for m in control.metrics.registry.collect()
        for s in m.samples
        if s.name == "kvgate_requests_total"
    )


async def test_ring_is_bounded_and_totals_match_metrics() -> None:
    control = make_control()
    state = DashboardState(control, "gateway", ring_size=5).attach()
    state.attach()  # idempotent: one hook
    assert control.on_finish == [state.record]
    served = [await serve_one(control, f"prompt {i}") for i in range(12)]
    snap = state.snapshot()
    assert len(state.ring) == 5
    ids = [r["request_id"] for r in snap["requests"]]
    assert ids == [c.request.request_id for c in reversed(served[-5:]) if c.request]
    assert snap["totals"]["requests"] == 12 == requests_total(control)
    assert sum(snap["totals"]["picks"].values()) == 12
    first = snap["requests"][0]
    assert first["status"] == 200 and first["winner"] == first["endpoint"] == "ep0"
    # every scorer's score per candidate (ep2 is unhealthy: not a candidate)
    assert set(first["scores"]) == {"ep0", "ep1"}
    assert set(first["scores"]["ep0"]) == {
        "total",
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
    }
    assert first["duration_ms"] is not None and first["duration_ms"] >= 0


async def test_endpoint_rows_and_profiles() -> None:
    control = make_control(outlier=OutlierConfig(consecutive_failures=1))
    state = DashboardState(control, "epp").attach()
    await serve_one(control, prompt_tokens=100, cached_tokens=40, completion_tokens=7)
    state._roll(time.perf_counter() + 1.0)  # close the interval: rates read closed ones
    snap = state.snapshot()
    assert snap["door"] == "epp"
    rows = {r["name"]: r for r in snap["endpoints"]}
    assert list(rows) == ["ep0", "ep1", "ep2"]
    assert rows["ep0"]["in_rotation"] and rows["ep0"]["healthy"]
    assert not rows["ep2"]["healthy"] and not rows["ep2"]["in_rotation"]
    assert rows["ep1"]["waiting"] == 1 and rows["ep1"]["kv_cache_usage"] == 0.25
    assert rows["ep0"]["picks_total"] == 1 and rows["ep0"]["picks_per_s"] > 0
    assert rows["ep0"]["hit_rate"] == 0.4 and rows["ep1"]["hit_rate"] is None
    assert all(r["breaker"] == "closed" for r in rows.values())
    weights = {s["name"]: s["weight"] for s in snap["profiles"]["default"]}
    assert weights == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
    }
    assert snap["flow_control"] is None
    assert snap["series"]["tokens_per_s"][-1] == 7.0
    assert snap["series"]["hit_rate"][-1] == 0.4
    # a failure opens ep0's breaker (consecutive_errors=1): the page shows it out of rotation
    ctx = control.begin("gateway", "/v1/completions")
    control.started(ctx)
    control.parse(ctx, "completions", b'{"model": "m", "prompt": "x"}', {})
    await control.route(ctx)
    control.start_attempt(ctx, ctx.result.target)  # type: ignore[union-attr]
    control.end_attempt(ctx, ResponseInfo(status=503, error="upstream_5xx"))
    control.finish(ctx, 503, "upstream_5xx")
    rows = {r["name"]: r for r in state.snapshot()["endpoints"]}
    assert rows["ep0"]["breaker"] == "open" and not rows["ep0"]["in_rotation"]
    assert state.snapshot()["totals"]["errors"] == 1


async def test_flow_control_queues_are_in_the_snapshot() -> None:
    control = make_control(FLOW)
    state = DashboardState(control, "gateway").attach()
    await control.start()
    try:
        await serve_one(control)
        flow = state.snapshot()["flow_control"]
        assert flow is not None and flow["queued"] == 0 and isinstance(flow["bands"], list)
    finally:
        await control.stop()


def test_idle_intervals_are_empty_points_and_bounded() -> None:
    control = make_control()
    state = DashboardState(control, "gateway", interval_s=1.0, points=10)
    t0 = state.current.start
    ctx = RequestContext("gateway", "/v1/completions", t0, status=200, duration_s=0.01)
    ctx.stream, ctx.ttft_s = True, 0.005
    state.record(ctx)
    late = RequestContext("gateway", "/v1/completions", t0 + 3.5, status=200, duration_s=0.02)
    state.record(late)  # intervals 1 and 2 had nothing
    assert [i.requests for i in state.closed] == [1, 0, 0]
    assert state.current.requests == 1 and state.current.start == t0 + 3.0
    series = state.snapshot()["series"]
    assert series["requests_per_s"][:3] == [1.0, 0.0, 0.0]
    assert series["ttft_p50_ms"][0] is not None and series["ttft_p50_ms"][1] is None
    state.record(RequestContext("gateway", "/x", t0 + 1000.0, status=200, duration_s=0.0))
    assert len(state.closed) == 10  # a long gap keeps only the last `points`
    assert state.closed[-1].start == state.current.start - 1.0


def test_quantiles_of_the_bucket_histogram() -> None:
    assert quantile_s([0] * (len(LATENCY_EDGES_S) + 1), 0.5) is None
    counts = [0] * (len(LATENCY_EDGES_S) + 1)
    for seconds in [0.010] * 50 + [0.100] * 40 + [1.0] * 10:
        counts[bisect_left(LATENCY_EDGES_S, seconds)] += 1
    # within the sample's bucket: at most 25 % off
    for q, expected in ((0.5, 0.010), (0.9, 0.100), (0.99, 1.0)):
        found = quantile_s(counts, q)
        assert found is not None and expected / 1.25 <= found <= expected * 1.25, (q, found)


def test_snapshot_bytes_are_shared_for_half_a_second() -> None:
    state = DashboardState(make_control(), "gateway")
    first = state.snapshot_bytes()
    assert state.snapshot_bytes() is first  # a second client gets the same bytes
    state._snapshot_at -= 1.0
    assert state.snapshot_bytes() is not first
    assert json.loads(first)["totals"]["requests"] == 0


async def test_a_failing_observer_does_not_break_finish(caplog: pytest.LogCaptureFixture) -> None:
    control = make_control()
    state = DashboardState(control, "gateway")

    def broken(ctx: RequestContext) -> None:
        raise RuntimeError("observer bug")

    control.on_finish.append(broken)
    state.attach()
    with caplog.at_level(logging.ERROR, logger="kvgate.requests.control"):
        ctx = await serve_one(control)
    assert ctx.finished and ctx.duration_s is not None
    assert state.total_requests == 1  # later observers still run
    assert "on_finish observer failed" in caplog.text
