"""Tracing of the request path with real parts: an in-process gateway (build_gateway) in front
of real HTTP model servers on loopback that record the headers they get, and a started
``kvgate epp`` spoken to as Envoy; spans land in the OpenTelemetry SDK's in-memory exporter.
The OTLP export from a real ``kvgate serve`` process is tests/e2e/test_tracing_otlp.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import ClientSession, web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from extproc.epp_rig import BASE, body_msg, exchange, headers_msg, open_epp, set_headers
from kvgate.gateway.app import build_gateway, build_scheduler_from, load_scheduler_config
from kvgate.gateway.cli import add_serve_args
from kvgate.requestcontrol import tracing
from kvgate.requestcontrol.tracing import (
    ATTEMPT_SPAN,
    REQUEST_SPAN,
    OtelRequestTracer,
    TracingError,
    settings_from_env,
)
from support.metrics_server import VLLM_METRICS_PAGE

MODEL = "m"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An always-on SDK tracer installed for the RequestControls built during the test."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()  # the SDK's default sampler: parent-based always-on
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(OtelRequestTracer(provider))
    try:
        yield memory
    finally:
        tracing.install(None)
        provider.shutdown()


@dataclass
class Upstream:
    """A model server on loopback: scraped for a real vLLM page, records what it was sent."""

    fail_first: int = 0  # answer 503 to this many chat requests first (any replica)
    seen: list[dict[str, str]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> str:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=VLLM_METRICS_PAGE)

        async def chat(request: web.Request) -> web.Response:
            await request.read()
            self.seen.append({k.lower(): v for k, v in request.headers.items()})
            if self.fail_first > 0:
                self.fail_first -= 1
                return web.json_response({"error": {"message": "busy"}}, status=503)
            usage = {
                "prompt_tokens": 40,
                "completion_tokens": 3,
                "total_tokens": 43,
                "prompt_tokens_details": {"cached_tokens": 32},
            }
            return web.json_response(
                {"id": "c", "object": "chat.completion", "model": MODEL, "usage": usage}
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", metrics)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def gateway_url(
    exporter: InMemorySpanExporter, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[str, Upstream]]:
    """A gateway built as ``kvgate serve`` builds it, over two recording model servers."""
    upstream = Upstream(fail_first=getattr(request, "param", 0))
    urls = [await upstream.start(), await upstream.start()]
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(
        ["--port", "0", "--endpoint", urls[0], "--endpoint", urls[1], "--no-request-log"]
    )
    config = load_scheduler_config(None, None, "llm-d-default")
    gateway = build_gateway(args, build_scheduler_from(config, seed=1), picker_config=config)
    await gateway.start()
    try:
        await _poll(lambda: len(gateway.pool.candidates()) == 2, "both endpoints in rotation")
        yield gateway.base_url, upstream
    finally:
        await gateway.stop()
        await upstream.stop()


async def _poll(check: object, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.02)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def _chat(base_url: str, headers: dict[str, str] | None = None) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 20}]}
    async with (
        ClientSession() as s,
        s.post(base_url + "/v1/chat/completions", json=body, headers=headers or {}) as r,
    ):
        await r.read()
        return r.status


async def test_gateway_request_span_carries_the_decision_and_the_upstream_gets_its_trace(
    exporter: InMemorySpanExporter, gateway_url: tuple[str, Upstream]
) -> None:
    base_url, upstream = gateway_url
    client_parent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    assert await _chat(base_url, {"traceparent": client_parent}) == 200
    await _poll(lambda: _by_name(exporter.get_finished_spans(), REQUEST_SPAN), "request span")
    spans = exporter.get_finished_spans()
    (req,) = _by_name(spans, REQUEST_SPAN)
    (attempt,) = _by_name(spans, ATTEMPT_SPAN)
    # the client's trace continues: same trace id, its span is the request span's parent
    assert format(req.context.trace_id, "032x") == CLIENT_TRACE_ID
    assert req.parent is not None and format(req.parent.span_id, "016x") == CLIENT_SPAN_ID
    assert req.kind is SpanKind.SERVER and attempt.kind is SpanKind.CLIENT
    assert attempt.parent is not None and attempt.parent.span_id == req.context.span_id
    assert req.start_time is not None and attempt.start_time is not None
    assert req.start_time <= attempt.start_time
    # the model server got a traceparent naming the attempt's span in the same trace
    (sent,) = upstream.seen
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE_ID, "01")
    assert span_id == format(attempt.context.span_id, "016x")
    a = dict(req.attributes or {})
    assert a["kvgate.door"] == "gateway" and a["http.response.status_code"] == 200
    assert a["gen_ai.request.model"] == MODEL and a["target_model"] == MODEL
    assert a["kvgate.scheduling.profile"] == "default"
    assert a["kvgate.endpoint"] == dict(attempt.attributes or {})["kvgate.endpoint"]
    assert a["kvgate.attempts"] == 1 and a["request_prio"] == 0
    assert a["gen_ai.usage.input_tokens"] == 40 and a["kvgate.cached_tokens"] == 32
    scores = json.loads(str(a["kvgate.scores"]))
    assert len(scores) == 2  # the primary profile's table: both endpoints
    served = scores[a["kvgate.endpoint"]]
    # every scorer of llm-d-default's profile, for the served endpoint, and the total
    assert {k for k in a if str(k).startswith("kvgate.score.")} == {
        f"kvgate.score.{name}" for name in served
    }
    assert {"total", "queue-scorer", "kv-cache-utilization-scorer"} <= set(served)
    assert a["kvgate.score.total"] == served["total"]
    assert "error.type" not in a and req.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("gateway_url", [1], indirect=True)
async def test_a_retry_is_a_second_attempt_span_under_the_same_request(
    exporter: InMemorySpanExporter, gateway_url: tuple[str, Upstream]
) -> None:
    base_url, upstream = gateway_url
    assert await _chat(base_url) == 200  # the first replica answers 503, the other 200
    await _poll(lambda: _by_name(exporter.get_finished_spans(), REQUEST_SPAN), "request span")
    spans = exporter.get_finished_spans()
    (req,) = _by_name(spans, REQUEST_SPAN)
    first, second = sorted(_by_name(spans, ATTEMPT_SPAN), key=lambda s: s.start_time or 0)
    assert {first.parent.span_id, second.parent.span_id} == {req.context.span_id}  # type: ignore[union-attr]
    assert req.parent is None  # no traceparent from the client: a new trace
    fa, sa = dict(first.attributes or {}), dict(second.attributes or {})
    assert fa["http.response.status_code"] == 503 and fa["error.type"] == "upstream_5xx"
    assert first.status.status_code is StatusCode.ERROR
    assert sa["http.response.status_code"] == 200 and "error.type" not in sa
    assert (fa["kvgate.attempt"], sa["kvgate.attempt"]) == (1, 2)
    assert fa["kvgate.endpoint"] != sa["kvgate.endpoint"]
    assert dict(req.attributes or {})["kvgate.attempts"] == 2
    # each attempt told its model server its own span
    ids = [h["traceparent"].split("-")[2] for h in upstream.seen]
    assert ids == [format(s.context.span_id, "016x") for s in (first, second)]


async def test_epp_sets_traceparent_as_a_header_mutation(exporter: InMemorySpanExporter) -> None:
    async with open_epp("h2") as epp:
        body = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
        client_parent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
        msgs = [headers_msg({**BASE, "traceparent": client_parent}), body_msg(body)]
        (head, _), call = await exchange(epp, msgs, expect=2)
        mutated = set_headers(head)
        await call.done_writing()
        await _poll(lambda: _by_name(exporter.get_finished_spans(), REQUEST_SPAN), "EPP span")
    spans = exporter.get_finished_spans()
    (req,) = _by_name(spans, REQUEST_SPAN)
    (attempt,) = _by_name(spans, ATTEMPT_SPAN)
    _, trace_id, span_id, _ = mutated["traceparent"].split("-")
    assert trace_id == CLIENT_TRACE_ID == format(req.context.trace_id, "032x")
    assert span_id == format(attempt.context.span_id, "016x")
    a = dict(req.attributes or {})
    assert a["kvgate.door"] == "epp"
    assert a["kvgate.endpoint"] == mutated["x-gateway-destination-endpoint"]


def test_settings_follow_gie_defaults_and_refuse_what_they_cannot_honour() -> None:
    s = settings_from_env({}, tracing.SERVICE_EPP)
    assert (s.service_name, s.exporters, s.sampler, s.ratio, s.insecure) == (
        "llm-d-inference-scheduler/epp",
        ("console",),
        "parentbased_traceidratio",
        0.1,
        True,
    )
    s = settings_from_env(
        {
            "OTEL_SERVICE_NAME": "llm-d-router/epp",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.5",
        },
        tracing.SERVICE_GATEWAY,
    )
    assert (s.service_name, s.exporters, s.ratio, s.insecure) == (
        "llm-d-router/epp",
        ("otlp",),
        0.5,
        False,
    )
    for env, named in [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER: unknown sampler"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG: expected a ratio"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG: expected a ratio"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: kvgate exports OTLP over gRPC only",
        ),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "OTEL_EXPORTER_OTLP_INSECURE: expected"),
    ]:
        with pytest.raises(TracingError) as info:
            settings_from_env(env, tracing.SERVICE_GATEWAY)
        assert str(info.value).startswith(named) and "\n" not in str(info.value)


def test_a_bad_tracing_variable_stops_start_up_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "serve", "--tracing", "--endpoint", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"OTEL_TRACES_SAMPLER": "xray", "PATH": ""},
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: OTEL_TRACES_SAMPLER: unknown sampler 'xray'")
    )


def test_tracing_off_imports_no_opentelemetry() -> None:
    """The request path's modules, both front doors and a whole request through
    RequestControl, with tracing off: OpenTelemetry is never loaded."""
    code = """
import random, sys, time
from kvgate.config import build_scheduler, load_picker_config, policy_config_text
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol.control import RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.scheduling.types import Metrics, ResponseInfo
import kvgate.gateway.app, kvgate.gateway.forward, kvgate.extproc.stream, kvgate.extproc.cli
pool = EndpointPool()
pool.upsert(EndpointSpec("e", "127.0.0.1", 1), healthy=True)
pool.update_metrics("e", Metrics(updated_at=time.monotonic()))
config = load_picker_config(text=policy_config_text("llm-d-default"))
control = RequestControl(pool, build_scheduler(config, PluginContext(rng=random.Random(0))),
                         RequestMetrics(pool), log_requests=False)
assert control.tracer is None
ctx = control.begin("gateway", "/v1/completions")
control.parse(ctx, "completions", b'{"model": "m", "prompt": "hi"}', {})
control.started(ctx)
control.schedule(ctx, control.candidates(ctx))
headers = control.start_attempt(ctx, ctx.result.target)
assert "traceparent" not in headers
control.end_attempt(ctx, ResponseInfo(status=200))
control.finish(ctx, 200)
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
