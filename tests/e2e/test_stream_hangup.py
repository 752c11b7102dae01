"""A client that hangs up right after a stream's ``data: [DONE]`` got the whole answer: the
gateway counts it as served (200), not as a client disconnect (499). The bench client does
exactly that, and the capacity runs' request logs read 499 for streams received in full.

The upstream is a stand-in on loopback that sends ``[DONE]`` and then holds the stream's last
chunk back, so the hang-up always lands before the stream's end."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from aiohttp import web

from support.procs import Proc, free_port, kvgate_cmd, wait_until

MODEL = "m"


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "usage": usage,
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
    await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
    await asyncio.sleep(2)  # the stream's end comes late
    await resp.write_eof()
    return resp


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(text="")


async def _models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL}]})


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _stream)
    return app


@pytest.fixture
def upstream() -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_hang_up_after_done_is_served(spawn: Callable[..., Proc], upstream: str) -> None:
    port = free_port()
    gw = spawn(kvgate_cmd("serve", "--port", str(port), "--endpoint", upstream,
                          "--policy", "random", "--log-format", "json"), name="gw")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    gw.wait_http(base + "/ready", timeout_s=30)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while b"data: [DONE]" not in got:
            data = s.recv(65536)
            assert data, f"the gateway closed before [DONE]: {got!r}"
            got += data
    # hung up before the stream's end (the upstream holds it back 2 s)

    def counted() -> list[str]:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return [
            line
            for line in text.splitlines()
            if line.startswith("kvgate_requests_total{") and not line.endswith(" 0.0")
        ]

    wait_until(lambda: bool(counted()), timeout_s=10, what="the request counted")
    (line,) = counted()
    assert 'status="200"' in line, line
