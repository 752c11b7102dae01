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


def test_an_idle_connection_holds_few_objects_for_the_collector() -> None:
    """Thousands of idle connections are walked by every young-generation collection while
    they live (4-5 ms pauses under the abuse benchmark): one that never sent a byte must not
    hold a parser and its bound callbacks. On uvloop, the loop kvgate serves on, that leaves
    6 tracked objects a connection (14 with the parser)."""
    import socket

    import uvloop

    async def idle_connections() -> float:
        server = HttpServer(_ok, first_request_timeout_s=30)
        port = await server.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        n = 200
        clients = [socket.socket() for _ in range(n)]
        for s in clients:
            s.setblocking(False)
        try:
            gc.collect()
            before = len(gc.get_objects())
            for s in clients:
                await loop.sock_connect(s, ("127.0.0.1", port))
            await _until(lambda: len(server.connections) == n)
            gc.collect()
            return (len(gc.get_objects()) - before) / n
        finally:
            for s in clients:
                s.close()
            await server.stop(1)

    per_connection = uvloop.run(idle_connections())
    assert per_connection <= 7, per_connection
