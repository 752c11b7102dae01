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

from kvgate.sim.server import FAULT_HEADER
from support.procs import Proc, wait_until
from support.sim import SimHandle, start_sim


def post(
    url: str, body: dict[str, Any], timeout: float = 10, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def faulty(module_spawn: Callable[..., Proc]) -> SimHandle:
    return start_sim(
        module_spawn, model="f", speed=50, failure_rate=0.5, failure_kinds="429,503", seed=3
    )


def test_injected_status_failures(faulty: SimHandle) -> None:
    url = faulty.url + "/v1/completions"
    statuses = [post(url, {"model": "f", "prompt": "hi", "max_tokens": 2})[0] for _ in range(30)]
    assert set(statuses) == {200, 429, 503}
    assert 5 <= statuses.count(200) <= 25
    status, body = post(
        url, {"model": "f", "prompt": "hi", "max_tokens": 2}, headers={FAULT_HEADER: "500"}
    )
    assert status == 500
    err = json.loads(body)["error"]
    assert err["code"] == 500 and "Injected failure" in err["message"]


def test_drop_and_hang(faulty: SimHandle) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=10)
    body = json.dumps({"model": "f", "prompt": "hi", "max_tokens": 20, "stream": True})
    conn.request(
        "POST", "/v1/completions", body, {"Content-Type": "application/json", FAULT_HEADER: "drop"}
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
        post(
            faulty.url + "/v1/completions",
            {"model": "f", "prompt": "hi", "max_tokens": 5},
            headers={FAULT_HEADER: "drop"},
        )
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(
            faulty.url + "/v1/completions",
            {"model": "f", "prompt": "hi", "max_tokens": 2},
            timeout=0.5,
            headers={FAULT_HEADER: "hang"},
        )


def test_startup_delay_then_sigterm_finishes_inflight_stream(spawn: Callable[..., Proc]) -> None:
    sim = start_sim(spawn, model="g", startup_delay=0.5)
    proc, port = sim.proc, sim.port
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
