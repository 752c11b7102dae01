"""Graceful drain on SIGTERM, with real processes on loopback.

``kvgate serve`` in front of a ``kvgate sim`` replica slowed to ``--speed 0.2`` (100 tokens
take about 2 s): a stream in flight when SIGTERM arrives runs to its ``[DONE]``, the
listening socket is closed at once (a new connection is refused), a request queued in flow
control is answered 503 ``shutting_down`` instead of waiting out the drain, and the process
exits 0 within ``--drain-timeout``. A stream longer than the drain timeout is cut there, and
the process still exits on time. ``kvgate epp`` drains the same way behind real Envoy.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = pytest.mark.slow

MODEL = "sim-model"
ENVOY_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"

#: One request in flight saturates the pool, so a second one queues in flow control.
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
  defaultRequestTTL: 60s
"""


@dataclass
class Stream:
    """A streamed completion read on a thread: chunks as they come, and how it ended."""

    port: int
    max_tokens: int
    path: str = "/v1/completions"
    first_chunk: threading.Event = field(default_factory=threading.Event)
    chunks: list[bytes] = field(default_factory=list)
    status: int = 0
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        body = {
            "model": MODEL,
            "prompt": "drain me",
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", self.path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.status = resp.status
            while line := resp.readline():
                self.chunks.append(line)
                self.first_chunk.set()
        except (OSError, http.client.HTTPException) as exc:
            self.error = type(exc).__name__
        finally:
            self.first_chunk.set()
            conn.close()

    def join(self, timeout_s: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the stream did not end"

    @property
    def tokens(self) -> int:
        return sum(1 for c in self.chunks if c.startswith(b"data: {"))

    @property
    def done(self) -> bool:
        return any(c.startswith(b"data: [DONE]") for c in self.chunks)


def post(port: int, body: dict[str, Any], timeout_s: float = 30) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def request_lines(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "kvgate.requests":
                out.append(record)
    return out


def start_serve(spawn: Callable[..., Proc], sim_url: str, *extra: str) -> tuple[int, Proc]:
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoint", sim_url, "--log-format", "json",
            "--refresh-metrics-interval", "50ms", *extra,
        ),
        name="gw",
    )  # fmt: skip
    proc.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=30)
    return port, proc


def exit_code_within(proc: Proc, timeout_s: float) -> int:
    proc.popen.wait(timeout=timeout_s)
    return int(proc.popen.returncode)


def test_serve_drains_stream_answers_queue_refuses_new(spawn: Callable[..., Proc]) -> None:
    sim = start_sim(spawn, model=MODEL, speed=0.2, seed=1)
    port, gw = start_serve(spawn, sim.url, "--drain-timeout", "20s", "--config-text", ONE_AT_A_TIME)
    stream = Stream(port, max_tokens=150).start()  # ~3 s at --speed 0.2
    assert stream.first_chunk.wait(10) and stream.status == 200
    queued: dict[str, Any] = {}

    def queued_request() -> None:
        queued["reply"] = post(port, {"model": MODEL, "prompt": "wait", "max_tokens": 2})

    waiter = threading.Thread(target=queued_request, daemon=True)
    waiter.start()
    metrics = f"http://127.0.0.1:{port}/metrics"
    wait_until(
        lambda: metric_sum(metrics, "inference_extension_flow_control_queue_size") == 1,
        timeout_s=10,
        what="the second request queued",
    )
    signalled = time.monotonic()
    gw.popen.send_signal(signal.SIGTERM)
    waiter.join(5)
    assert not waiter.is_alive(), "the queued request was not answered at once"
    status, body = queued["reply"]
    assert status == 503, body
    assert body["error"]["code"] == "shutting_down", body
    wait_until(lambda: refused(port), timeout_s=5, what="the listener closed")
    assert stream.tokens < 150, "the stream ended before the drain began"
    stream.join(20)
    assert stream.error is None and stream.done and stream.tokens == 150
    assert exit_code_within(gw, 20) == 0
    assert time.monotonic() - signalled < 20
    statuses = sorted(line["status"] for line in request_lines(gw))
    assert statuses == [200, 503], gw.log()[-3000:]


def test_serve_drain_deadline_cuts_long_stream(spawn: Callable[..., Proc]) -> None:
    sim = start_sim(spawn, model=MODEL, speed=0.2, seed=2)
    port, gw = start_serve(spawn, sim.url, "--drain-timeout", "1s")
    stream = Stream(port, max_tokens=1000).start()  # ~20 s: far past the drain timeout
    assert stream.first_chunk.wait(10) and stream.status == 200
    signalled = time.monotonic()
    gw.popen.send_signal(signal.SIGTERM)
    assert exit_code_within(gw, 10) == 0
    # the drain timeout, then aiohttp's cancel phase and the rest of the shutdown
    assert time.monotonic() - signalled < 5
    stream.join(5)
    assert not stream.done and stream.tokens < 1000
    lines = request_lines(gw)
    assert len(lines) == 1 and lines[0]["error"] == "drain_timeout", lines


@pytest.mark.envoy
def test_epp_drain_behind_envoy(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """Envoy keeps its ext_proc stream to the EPP open for the whole exchange: SIGTERM to
    ``kvgate epp`` must let that stream end, so the client's stream completes."""
    sim = start_sim(spawn, model=MODEL, speed=0.2, seed=3)
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(f"- {sim.url}\n")
    grpc_port, health, metrics_port = free_port(), free_port(), free_port()
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics_port),
            "--endpoints-file", str(endpoints), "--drain-timeout", "20s",
            "--refresh-metrics-interval", "50ms", "--zap-encoder", "json",
        ),
        name="epp",
    )  # fmt: skip
    epp.wait_http(f"http://127.0.0.1:{metrics_port}/healthz", timeout_s=30)
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=grpc_port)
    cfg = envoyconfig.adapt(ENVOY_EXAMPLE, ports, access_log=tmp_path / "access.log")
    envoy = spawn(envoyconfig.command(envoyconfig.write(cfg, tmp_path / "envoy.yaml")), "envoy")
    envoy.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    stream = Stream(ports.listen, max_tokens=150).start()
    assert stream.first_chunk.wait(15) and stream.status == 200, stream.chunks
    signalled = time.monotonic()
    epp.popen.send_signal(signal.SIGTERM)
    wait_until(lambda: refused(grpc_port), timeout_s=5, what="the EPP's listener closed")
    stream.join(20)
    assert stream.error is None and stream.done and stream.tokens == 150
    assert exit_code_within(epp, 20) == 0
    assert time.monotonic() - signalled < 20
