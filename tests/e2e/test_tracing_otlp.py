"""``kvgate serve --tracing`` as a real process, in front of a real ``kvgate sim``, exporting
OTLP/gRPC to a real receiver process (tests/support/otlp_receiver.py), configured only by
the standard OTEL_* variables."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.otlp_receiver import start_otlp_receiver
from support.procs import Proc, free_port, kvgate_cmd
from support.sim import start_sim

CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers


def _chat(base: str, headers: dict[str, str]) -> dict[str, Any]:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "tell me " * 60}]}
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps({**body, "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def test_serve_exports_request_and_attempt_spans_over_otlp(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    receiver = start_otlp_receiver(spawn, tmp_path)
    sim = start_sim(spawn, "--speed", "100")
    port = free_port()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "kvgate-e2e",
        "OTEL_TRACES_SAMPLER": "always_on",
        # nothing is exported before shutdown: the spans arriving prove the flush on SIGTERM
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    gateway = spawn(
        kvgate_cmd("serve", "--tracing", "--port", str(port), "--endpoint", sim.url), env=env
    )
    base = f"http://127.0.0.1:{port}"
    gateway.wait_http(base + "/ready", timeout_s=30)
    parent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    answers = [_chat(base, {"traceparent": parent}), _chat(base, {})]
    assert receiver.spans() == []
    assert gateway.stop() == 0
    spans = receiver.wait_for(lambda s: len(s) >= 4, timeout_s=10, what="4 spans after SIGTERM")
    assert len(spans) == 4 and {s["service"] for s in spans} == {"kvgate-e2e"}
    requests = [s for s in spans if s["name"] == "gateway.request"]
    attempts = {s["parent_span_id"]: s for s in spans if s["name"] == "gateway.upstream_attempt"}
    assert len(requests) == 2 and len(attempts) == 2
    by_trace = {s["trace_id"]: s for s in requests}
    continued = by_trace.pop(CLIENT_TRACE_ID)  # the client's trace went on
    assert continued["parent_span_id"] == CLIENT_SPAN_ID
    (fresh,) = by_trace.values()
    assert fresh["parent_span_id"] == ""
    for req, answer in zip((continued, fresh), answers, strict=True):
        attempt = attempts[req["span_id"]]
        assert req["kind"] == SERVER and attempt["kind"] == CLIENT
        assert attempt["trace_id"] == req["trace_id"]
        a = req["attributes"]
        assert a["kvgate.door"] == "gateway" and a["http.response.status_code"] == 200
        assert a["kvgate.endpoint"] == f"127.0.0.1:{sim.port}"
        assert attempt["attributes"]["server.port"] == sim.port
        usage = answer["usage"]
        assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert a["kvgate.cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert "kvgate.score.total" in a and json.loads(a["kvgate.scores"])
    # the same prompt twice on one replica: the second found its prefix cached
    assert fresh["attributes"]["kvgate.cached_tokens"] > 0


def test_up_traces_its_gateway_too(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    receiver = start_otlp_receiver(spawn, tmp_path)
    port = free_port()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    up = spawn(
        kvgate_cmd(
            "up", "--example", "--engine", "sim", "--port", str(port), "--tracing",
            "--run-dir", str(tmp_path / "run"),
        ),
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    up.wait_http(base + "/ready", timeout_s=60)
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as resp:
        model = json.loads(resp.read())["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    assert up.stop() == 0
    spans = receiver.wait_for(lambda s: len(s) >= 2, timeout_s=10, what="2 spans after SIGTERM")
    names = sorted(s["name"] for s in spans)
    assert names == ["gateway.request", "gateway.upstream_attempt"]
