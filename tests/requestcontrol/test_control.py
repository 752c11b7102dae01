"""RequestControl with real parts: a Scheduler built from a config, a real EndpointPool whose
metrics the test sets, real flow control, metrics and the JSON request log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvgate.config import build_scheduler, load_picker_config, policy_config_text
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.errors import BadRequestError, FlowRejected, ModelNotFoundError, NoCandidatesError
from kvgate.flowcontrol.objectives import ObjectiveStore
from kvgate.flowcontrol.saturation import SaturationDetector
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol import reqlog
from kvgate.requestcontrol.build import build_request_control
from kvgate.requestcontrol.control import RequestContext, RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.requestcontrol.reqlog import configure_logging, flush_request_log
from kvgate.scheduling.types import Metrics, ResponseInfo

MODEL = "m"
#: One request per endpoint (a concurrency detector: two slots over the two endpoints), so a
#: test holds the pool saturated with two open attempts and watches in-flight counts.
ONE_AT_A_TIME = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
- {type: concurrency-detector, name: one, parameters: {maxConcurrency: 1}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
flowControl:
  saturationDetector: {pluginRef: one}
  maxRequests: 2
"""
OBJECTIVES = """apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 5, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: pool}}
"""
#: The request line's fields (reqlog's module docstring), whichever door served.
LOG_KEYS = {
    "ts", "level", "logger", "msg", "door", "request_id", "model", "target_model", "path",
    "status", "endpoint", "attempts", "stream", "fairness_id", "priority", "queue_wait_ms",
    "ttft_ms", "duration_ms", "error", "prompt_tokens", "completion_tokens", "cached_tokens",
    "scores",
}  # fmt: skip


def make_control(
    config_text: str | None = None,
    *,
    models: dict[str, set[str]] | None = None,
    objectives: ObjectiveStore | None = None,
) -> RequestControl:
    """Two healthy endpoints with fresh metrics (ep1 busier) behind ``config_text``."""
    config = load_picker_config(text=config_text or policy_config_text("least-queue"))
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    pool = EndpointPool()
    for i in range(2):
        name = f"ep{i}"
        pool.upsert(EndpointSpec(name, "127.0.0.1", 8000 + i), healthy=True)
        pool.update_metrics(name, Metrics(waiting_queue_size=i, updated_at=time.monotonic()))
    models_of = None if models is None else models.get
    return build_request_control(
        pool,
        scheduler,
        RequestMetrics(pool),
        config,
        objectives=objectives,
        models_of=models_of,
    )


def body(model: str = MODEL, **extra: Any) -> bytes:
    return json.dumps({"model": model, "prompt": "hello", **extra}).encode()


def begin(control: RequestControl, raw: bytes = b"", **headers: str) -> RequestContext:
    ctx = control.begin("gateway", "/v1/completions")
    control.started(ctx)
    if raw:
        control.parse(ctx, "completions", raw, headers)
    return ctx


def sample(control: RequestControl, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample's value (0 when absent) summed over every label set when ``labels`` is None."""
    registry = control.metrics.registry
    if labels is not None:
        return registry.get_sample_value(name, labels) or 0.0
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def in_flight(control: RequestControl, endpoint: str) -> int:
    assert control.flow is not None
    detector: SaturationDetector = control.flow.detector
    return int(detector.tracker.in_flight(endpoint))  # type: ignore[attr-defined]


# --- parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"prompt": "x"}', "'model'"),
        (b'{"model": "m", "prompt": 3}', "'prompt'"),
        (b'{"model": "m", "prompt": [1, "a"]}', "'prompt'"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, ""),
    ],
    ids=[
        "empty",
        "not-json",
        "array",
        "no-model",
        "bad-prompt",
        "mixed-prompt",
        "deep",
        "deep-list",
    ],
)
def test_bad_bodies_are_400(raw: bytes, says: str) -> None:
    control = make_control()
    ctx = begin(control)
    with pytest.raises(BadRequestError) as info:
        control.parse(ctx, "completions", raw, {})
    assert info.value.status == 400
    assert says in info.value.message
    control.finish(ctx, 400, "BadRequestError")


def test_chat_messages_are_checked() -> None:
    control = make_control()
    ctx = begin(control)
    with pytest.raises(BadRequestError) as info:
        control.parse(ctx, "chat", b'{"model": "m", "messages": [{"content": "x"}]}', {})
    assert info.value.param == "messages[0]"


def test_fairness_id_from_either_header_gie_first() -> None:
    control = make_control()
    assert begin(control, body()).fairness_id == ""
    gie = begin(control, body(), **{"X-Gateway-Inference-Fairness-Id": "tenant-a"})
    assert gie.fairness_id == "tenant-a"
    llmd = begin(control, body(), **{"x-llm-d-inference-fairness-id": "tenant-b"})
    assert llmd.fairness_id == "tenant-b"
    both = begin(
        control,
        body(),
        **{"x-gateway-inference-fairness-id": "a", "x-llm-d-inference-fairness-id": "b"},
    )
    assert both.fairness_id == "a"


AGENT_IDENTITY = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: agent-identity, parameters: {additionalSessionHeaders: [x-my-agent]}}
- {type: queue-scorer}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""


async def test_agent_identity_sets_the_fairness_id_an_explicit_header_still_wins() -> None:
    """llm-d's director order: fairness header, then agent-identity's attribute, then the
    default flow; the flow controller queues the request under that id."""
    control = make_control(AGENT_IDENTITY)
    session = begin(control, body(), **{"X-Claude-Code-Session-Id": "sess-1"})
    assert session.fairness_id == "sess-1"
    assert begin(control, body(), **{"x-my-agent": "a", "session-id": "b"}).fairness_id == "a"
    explicit = {"x-llm-d-inference-fairness-id": "tenant", "session-id": "b"}
    assert begin(control, body(), **explicit).fairness_id == "tenant"
    assert begin(control, body()).fairness_id == ""  # flow control's default-flow
    assert await control.admit(session) is None
    assert session.flow_item is not None and session.flow_item.fairness_id == "sess-1"
    labels = {
        "extension_point": "request_header",
        "plugin_type": "agent-identity",
        "plugin_name": "agent-identity",
    }
    assert sample(control, "kvgate_plugin_duration_seconds_count", labels) == 4


def test_without_header_processors_parse_runs_none() -> None:
    assert make_control()._header_processors == ()


def test_priority_from_the_named_objective(tmp_path: Path) -> None:
    path = tmp_path / "objectives.yaml"
    path.write_text(OBJECTIVES)
    control = make_control(objectives=ObjectiveStore.from_file(path))
    header = "x-gateway-inference-objective"
    assert begin(control, body(), **{header: "critical"}).flow_priority == 5
    assert begin(control, body(), **{header: "batch"}).flow_priority == -1
    assert begin(control, body(), **{header: "unknown"}).flow_priority == 0
    assert begin(control, body()).flow_priority == 0


def test_client_routing_headers_never_reach_the_request() -> None:
    control = make_control()
    ctx = begin(
        control,
        body(),
        **{"X-Gateway-Destination-Endpoint": "10.0.0.1:1", "X-Custom": "kept"},
    )
    assert ctx.request is not None
    assert "x-gateway-destination-endpoint" not in ctx.request.headers
    assert ctx.request.headers["x-custom"] == "kept"


# --- candidates ------------------------------------------------------------------------------


def test_unknown_model_is_404_with_the_served_list() -> None:
    control = make_control(models={"ep0": {"a"}, "ep1": {"b", MODEL}})
    ctx = begin(control, body("nope"))
    with pytest.raises(ModelNotFoundError) as info:
        control.candidates(ctx)
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "(served: a, b, m)" in info.value.message
    ok = begin(control, body(MODEL))
    assert [e.name for e in control.candidates(ok)] == ["ep1"]


def test_nothing_in_rotation_is_503() -> None:
    control = make_control()
    for name in ("ep0", "ep1"):
        control.pool.set_healthy(name, False)
    ctx = begin(control, body())
    with pytest.raises(NoCandidatesError) as info:
        control.candidates(ctx)
    assert info.value.status == 503
    # a subset that leaves nothing is the same answer
    control.pool.set_healthy("ep0", True)
    with pytest.raises(NoCandidatesError):
        control.candidates(ctx, lambda ready: [])


# --- attempts and the end ----------------------------------------------------------------------


async def test_attempts_end_once_and_requests_finish_once() -> None:
    control = make_control(ONE_AT_A_TIME)
    await control.start()
    first = begin(control, body())
    second = begin(control, body())
    for ctx in (first, second):
        await control.route(ctx)
        assert ctx.result is not None and ctx.result.target.name == "ep0"
    # both admitted (two slots); start both attempts
    control.start_attempt(first, first.result.target)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError):
        control.start_attempt(first, first.result.target)  # type: ignore[union-attr]
    control.start_attempt(second, second.result.target)  # type: ignore[union-attr]
    assert in_flight(control, "ep0") == 2
    control.end_attempt(first, ResponseInfo(status=200))
    control.end_attempt(first, ResponseInfo(status=200))  # a second end is a no-op
    assert in_flight(control, "ep0") == 1
    control.finish(first, 200)
    control.finish(first, 500)  # a second finish is a no-op
    assert first.status == 200
    # finishing with an attempt open ends it as the client leaving
    control.finish(second, 499)
    assert not second.attempt_open and second.error == "client_disconnect"
    assert in_flight(control, "ep0") == 0
    assert sample(control, "kvgate_requests_total") == 2
    assert sample(control, "kvgate_requests_in_flight") == 0
    await control.stop()


async def test_a_queued_request_is_dispatched_when_the_attempt_ends() -> None:
    control = make_control(ONE_AT_A_TIME)
    await control.start()
    holders = [begin(control, body()) for _ in range(2)]
    for holder in holders:
        result = await control.route(holder)
        control.start_attempt(holder, result.target)
    waiter = begin(control, body())
    task = asyncio.create_task(control.route(waiter))
    flow = control.flow
    assert flow is not None
    deadline = time.monotonic() + 5
    while flow.snapshot()["queued"] != 1:
        assert not task.done(), task.result()
        assert time.monotonic() < deadline, flow.snapshot()
        await asyncio.sleep(0.001)
    # the pool is saturated: sheddable requests are shed, and the queue holds at most 2
    shed = begin(control, body())
    shed.flow_priority = -1
    with pytest.raises(FlowRejected) as info:
        await control.route(shed)
    assert (info.value.status, info.value.reason) == (429, "shed")
    control.finish(shed, 429, "shed")
    assert not task.done()
    control.end_attempt(holders[0], ResponseInfo(status=200))
    control.finish(holders[0], 200)
    result = await asyncio.wait_for(task, 5)
    assert waiter.queue_wait_s is not None and waiter.queue_wait_s > 0
    control.start_attempt(waiter, result.target)
    for ctx in (holders[1], waiter):
        control.finish(ctx, 200)
    assert in_flight(control, "ep0") == in_flight(control, "ep1") == 0
    assert sample(control, "kvgate_requests_total") == 4
    outcomes = {
        labels["outcome"]: v
        for labels, v in (
            (s.labels, s.value)
            for m in control.metrics.registry.collect()
            for s in m.samples
            if s.name == "inference_extension_flow_control_requests_total"
        )
    }
    assert outcomes == {"Dispatched": 3, "Shed": 1}
    await control.stop()


async def test_metrics_reconcile_with_every_finished_request() -> None:
    control = make_control(models={"ep0": {MODEL}, "ep1": {MODEL}})
    await control.start()
    seen = 0
    for raw in (body(), b"{bad", body("nope"), body(), b""):
        ctx = begin(control)
        seen += 1
        try:
            control.parse(ctx, "completions", raw, {})
            result = await control.route(ctx)
        except (BadRequestError, ModelNotFoundError) as exc:
            control.finish(ctx, exc.status, type(exc).__name__)
            continue
        control.start_attempt(ctx, result.target)
        control.end_attempt(ctx, ResponseInfo(status=200, prompt_tokens=3, completion_tokens=1))
        control.finish(ctx, 200)
    assert sample(control, "kvgate_requests_total") == seen
    assert sample(control, "inference_objective_request_total") == seen
    assert sample(control, "kvgate_requests_in_flight") == 0
    errors = sample(control, "inference_objective_request_error_total")
    assert errors == 3
    assert (
        sample(
            control, "kvgate_requests_total", {"model": MODEL, "endpoint": "ep0", "status": "200"}
        )
        == 2
    )
    await control.stop()


# --- the request log ---------------------------------------------------------------------------


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON request lines into a buffer; kvgate's logging set-up is restored afterwards."""
    root = logging.getLogger("kvgate")
    saved = (list(root.handlers), root.level, root.propagate)
    monkeypatch.setattr(reqlog, "_FAST_BUFFER", None)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield stream
    flush_request_log()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


def request_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    flush_request_log()
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("logger") == "kvgate.requests"]


async def test_the_request_line_carries_every_field(log_stream: io.StringIO) -> None:
    control = make_control()
    ctx = begin(
        control,
        body(),
        **{"x-request-id": "rid-1", "x-gateway-inference-fairness-id": "tenant-a"},
    )
    result = await control.route(ctx)
    control.start_attempt(ctx, result.target)
    control.first_byte(ctx)  # a JSON answer: no TTFT in the line (both doors agree)
    control.end_attempt(
        ctx, ResponseInfo(status=200, prompt_tokens=5, completion_tokens=2, cached_tokens=4)
    )
    control.finish(ctx, 200)
    stream = begin(control, body(stream=True))
    control.start_attempt(stream, (await control.route(stream)).target)
    control.first_byte(stream)
    control.end_attempt(stream, ResponseInfo(status=200))
    control.finish(stream, 200)
    bad = begin(control)
    with pytest.raises(BadRequestError):
        control.parse(bad, "completions", b"{", {})
    control.finish(bad, 400, "BadRequestError")
    ok, streamed, rejected = request_lines(log_stream)
    assert set(ok) == set(streamed) == set(rejected) == LOG_KEYS
    assert ok["ttft_ms"] is None and streamed["ttft_ms"] >= 0 and streamed["stream"] is True
    assert ok["door"] == "gateway" and ok["path"] == "/v1/completions"
    assert (ok["request_id"], ok["model"], ok["status"], ok["endpoint"]) == (
        "rid-1",
        MODEL,
        200,
        "ep0",
    )
    assert (ok["fairness_id"], ok["priority"], ok["attempts"], ok["error"]) == (
        "tenant-a",
        0,
        1,
        None,
    )
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["cached_tokens"]) == (5, 2, 4)
    assert set(ok["scores"]) == {"ep0", "ep1"}
    assert ok["scores"]["ep0"]["total"] > ok["scores"]["ep1"]["total"]
    assert ok["duration_ms"] >= 0 and ok["queue_wait_ms"] is None
    assert (rejected["status"], rejected["error"], rejected["endpoint"]) == (
        400,
        "BadRequestError",
        None,
    )
