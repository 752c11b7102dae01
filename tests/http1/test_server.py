"""kvgate.http1's server beyond the wire format: what a closed connection leaves behind, and
how timed-out connections are closed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable

from kvgate.http1 import HttpRequest, HttpServer, Response
from kvgate.http1 import server as server_module


async def _ok(req: HttpRequest) -> Response:
    return Response(200, b"ok")


async def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_closed_connection_is_freed_without_the_cycle_collector() -> None:
    """Thousands of closed connections waiting for a full collection made it pause the loop
    for 60-80 ms (docs/RELIABILITY.md): reference counting alone must free one."""
    server = HttpServer(_ok, first_request_timeout_s=5)
    port = await server.start("127.0.0.1", 0)
    gc.disable()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        (conn,) = server.connections
        ref = weakref.ref(conn)
        del conn
        writer.close()
        await _until(lambda: not server.connections)
        await _until(lambda: ref() is None)
    finally:
        gc.enable()
        await server.stop(1)


async def test_timed_out_connections_are_closed_in_batches(monkeypatch: object) -> None:
    """More idle connections than one batch all close at their deadline, a batch per turn."""
    monkeypatch.setattr(server_module, "SWEEP_INTERVAL_S", 0.05)  # type: ignore[attr-defined]
    server = HttpServer(_ok, first_request_timeout_s=0.2)
    port = await server.start("127.0.0.1", 0)
    n = server_module.CLOSE_BATCH * 3 + 5
    try:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
        await _until(lambda: len(server.connections) == n)
        for reader, _ in conns:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert server.num_closed_slow == n
        for _, writer in conns:
            writer.close()
    finally:
        await server.stop(1)
