"""Fault injection and graceful shutdown of a real ``kvgate sim``."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim


def post(url: str, body: dict[str, Any], timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_injected_status_failures(module_spawn: Callable[..., Proc]) -> None:
    sim = start_sim(
        module_spawn, model="f", speed=50, failure_rate=0.5, failure_kinds="429,503", seed=3
    )
    statuses = [
        post(sim.url + "/v1/completions", {"model": "f", "prompt": "hi", "max_tokens": 2})[0]
        for _ in range(30)
    ]
    assert set(statuses) == {200, 429, 503}
    assert 5 <= statuses.count(200) <= 25
    status, body = post(
        sim.url + "/v1/completions", {"model": "f", "prompt": "hi", "max_tokens": 2}
    )
    if status != 200:
        err = json.loads(body)["error"]
        assert err["code"] == status and "Injected failure" in err["message"]


def test_drop_and_hang(module_spawn: Callable[..., Proc]) -> None:
    drop = start_sim(module_spawn, model="d", speed=50, failure_rate=1, failure_kinds="drop")
    conn = http.client.HTTPConnection("127.0.0.1", drop.port, timeout=10)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({"model": "d", "prompt": "hi", "max_tokens": 20, "stream": True}),
        {"Content-Type": "application/json"},
    )
    try:
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            data = resp.read()
            assert b"[DONE]" not in data  # a cleanly ended stream would be a failure of the fault
            raise ConnectionError("stream ended early")
    finally:
        conn.close()
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
        post(drop.url + "/v1/completions", {"model": "d", "prompt": "hi", "max_tokens": 5})

    hang = start_sim(module_spawn, model="h", speed=50, failure_rate=1, failure_kinds="hang")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(
            hang.url + "/v1/completions",
            {"model": "h", "prompt": "hi", "max_tokens": 2},
            timeout=0.5,
        )


def test_startup_delay_then_sigterm_finishes_inflight_stream(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(
        kvgate_cmd("sim", "--port", str(port), "--model", "g", "--startup-delay", "0.5"), name="sim"
    )
    proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
    # 40 tokens of ~25 ms decode each (qwen3-0.6b profile at speed 1 ... batch 1: ~4 ms).
    body = {"model": "g", "prompt": "hi", "max_tokens": 400, "stream": True, "ignore_eos": True}
    result: dict[str, bytes] = {}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
            )
            result["data"] = conn.getresponse().read()
        finally:
            conn.close()

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.3)  # let the stream start; SIGTERM arrives mid-stream
    proc.popen.send_signal(signal.SIGTERM)
    t.join(30)
    assert result["data"].rstrip().endswith(b"data: [DONE]")
    assert result["data"].count(b'"text"') == 400
    wait_until(lambda: not proc.alive(), timeout_s=15, what="sim exits after draining")
    assert proc.popen.returncode == 0
