"""Hostile clients against a real ``kvgate serve`` in front of a real ``kvgate sim``: each
gets a clear 4xx in OpenAI's error shape or costs a bounded amount, and a well-behaved
request still succeeds afterwards."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = pytest.mark.slow

MODEL = "sim-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Proc]]:
    tmp = tmp_path_factory.mktemp("abuse")
    procs: list[Proc] = []

    def spawn(args: list[str], name: str = "p", env: dict[str, str] | None = None) -> Proc:
        procs.append(Proc(args, tmp / f"{name}.log", env=env))
        return procs[-1]

    try:
        sim = start_sim(spawn, model=MODEL, speed=50)
        port = free_port()
        gw = spawn(
            kvgate_cmd(
                "serve", "--port", str(port), "--endpoint", sim.url, "--log-format", "json",
                "--max-body-bytes", "65536", "--header-timeout", "1s",
            ),
            name="gw",
        )  # fmt: skip
        gw.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=30)
        yield port, gw
    finally:
        for proc in reversed(procs):
            proc.stop()


def send(
    port: int, body: bytes, headers: dict[str, str] | None = None, path: str = "/v1/completions"
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def openai_error(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err, body
    return dict(err)


def good(port: int) -> None:
    body = {"model": MODEL, "prompt": "still fine", "max_tokens": 2}
    status, data = send(port, json.dumps(body).encode())
    assert status == 200, data


def test_oversized_body_is_413(gateway: tuple[int, Proc]) -> None:
    port, _ = gateway
    big = json.dumps({"model": MODEL, "prompt": "x" * 100_000}).encode()
    status, data = send(port, big)
    assert status == 413 and openai_error(data)
    # the same without a Content-Length (chunked): refused once the limit is passed
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/completions", iter([big[:40_000], big[40_000:]]),
                 {"Content-Type": "application/json"}, encode_chunked=True)  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413 and openai_error(resp.read())
    conn.close()
    good(port)


def test_oversized_header_is_refused(gateway: tuple[int, Proc]) -> None:
    port, _ = gateway
    status, _ = send(port, b"{}", {"X-Junk": "a" * 20_000})
    assert status in (400, 431)
    good(port)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{not utf-8",
        b'{"model": "sim-model", "prompt": "\xc3\x28"}',
        b"[" * 30_000 + b"]" * 30_000,
        b'{"model": "sim-model", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"{",
        b"",
        b"[]",
        b'"just a string"',
    ],
    ids=[
        "bad-utf8",
        "bad-utf8-in-string",
        "nested-30k",
        "nested-prompt",
        "truncated",
        "empty",
        "array",
        "string",
    ],
)
def test_malformed_bodies_are_400(gateway: tuple[int, Proc], body: bytes) -> None:
    port, _ = gateway
    status, data = send(port, body)
    assert status == 400, data[:300]
    openai_error(data)


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", 1), ("model", None), ("model", ["a"]), ("prompt", 5), ("prompt", {"a": 1}),
        ("stream", "yes"), ("max_tokens", "many"), ("max_tokens", -1), ("n", "two"),
        ("temperature", "hot"), ("stream_options", 3),
    ],
)  # fmt: skip
def test_wrong_types_are_400(gateway: tuple[int, Proc], field: str, value: Any) -> None:
    port, _ = gateway
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, field: value}
    status, data = send(port, json.dumps(body).encode())
    assert status == 400, (field, value, data[:300])
    openai_error(data)


def test_wrong_types_in_chat_are_400(gateway: tuple[int, Proc]) -> None:
    port, _ = gateway
    for messages in ("hi", [1, 2], [{"role": 3, "content": "x"}], [{"content": None}]):
        body = {"model": MODEL, "messages": messages}
        status, data = send(port, json.dumps(body).encode(), path="/v1/chat/completions")
        assert status == 400, (messages, data[:300])
        openai_error(data)


@pytest.mark.parametrize("field,value", [("n", 10**9), ("max_tokens", 10**12), ("n", 0)])
def test_absurd_counts_are_refused_quickly(
    gateway: tuple[int, Proc], field: str, value: int
) -> None:
    """Passed to the model server, which refuses them as vLLM does (400); never a 5xx and
    never an attempt to generate them."""
    port, _ = gateway
    started = time.monotonic()
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, field: value}
    status, data = send(port, json.dumps(body).encode())
    assert 400 <= status < 500, data[:300]
    openai_error(data)
    assert time.monotonic() - started < 2


def test_slowloris_is_closed_at_the_header_timeout(gateway: tuple[int, Proc]) -> None:
    port, _ = gateway
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    started = time.monotonic()

    def closed(s: socket.socket) -> bool:
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True

    for s in socks + idle:
        wait_until(lambda s=s: closed(s), timeout_s=5, what="connection closed")
        s.close()
    assert time.monotonic() - started < 4  # --header-timeout 1s
    good(port)


def test_gateway_still_healthy(gateway: tuple[int, Proc]) -> None:
    port, gw = gateway
    good(port)
    assert gw.alive()
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
