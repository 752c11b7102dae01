"""The relay's HTTP/1.1 client against a raw socket server: framing, keep-alive, errors."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamStreamError

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\ndata: \r\n"
    b"3;ext=1\r\nabc\r\n"
    b"0\r\nX-Trailer: y\r\n\r\n"
)
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _server(replies: list[bytes], *, piece: int = 0, close_after: bool = False):  # type: ignore[no-untyped-def]
    """Answer each request on a connection with the next reply, in pieces of ``piece`` bytes."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                reply = replies.pop(0)
                step = piece or len(reply)
                for i in range(0, len(reply), step):
                    writer.write(reply[i : i + step])
                    await writer.drain()
                    await asyncio.sleep(0)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, seen


@pytest.mark.parametrize("piece", [0, 1, 7])
async def test_chunked_and_length_bodies_any_split(piece: int) -> None:
    server, port, seen = await _server([CHUNKED, LENGTH], piece=piece)
    client = UpstreamClient()
    try:
        r = await client.post("127.0.0.1", port, "/v1/x", [("x-a", "1")], b'{"k":1}')
        assert r.status == 200 and r.content_type == "text/event-stream"
        assert b"".join([c async for c in r.iter_chunks()]) == b"data: abc"
        r.release()
        r2 = await client.post("127.0.0.1", port, "/v1/y", [], b"")
        assert await r2.read() == b"{}"
        r2.release()
        assert len(seen) == 2  # both on one keep-alive connection
        assert seen[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"x-a: 1\r\n" in seen[0]
        assert seen[0].endswith(b'\r\n\r\n{"k":1}')
    finally:
        await client.close()
        server.close()


async def test_idle_connection_closed_by_server_is_retried_fresh() -> None:
    server, port, seen = await _server([LENGTH, LENGTH], close_after=True)
    client = UpstreamClient()
    try:
        r = await client.post("127.0.0.1", port, "/", [], b"")
        assert await r.read() == b"{}"
        r.release()
        await asyncio.sleep(0.05)  # the server closes its side meanwhile
        r = await client.post("127.0.0.1", port, "/", [], b"")
        assert await r.read() == b"{}"
        r.release()
        assert len(seen) == 2
    finally:
        await client.close()
        server.close()


async def test_errors() -> None:
    client = UpstreamClient()
    with pytest.raises(UpstreamConnectError):
        s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = s.sockets[0].getsockname()[1]
        s.close()
        await s.wait_closed()
        await client.post("127.0.0.1", port, "/", [], b"")
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    server, port, _ = await _server([truncated], close_after=True)
    try:
        r = await client.post("127.0.0.1", port, "/", [], b"")
        with pytest.raises(UpstreamStreamError):
            await r.read()
        r.release()
    finally:
        await client.close()
        server.close()


async def test_deadline_bounds_the_head_and_the_body() -> None:
    """Past ``deadline`` the wait for the head, or for more body, raises TimeoutError and the
    connection is closed (the server sees it go); a finished answer is not touched."""
    gone = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/silent" not in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # 7 short
        await reader.read()  # until the client closes
        writer.close()
        gone.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post("127.0.0.1", port, "/silent", [], b"", deadline=started + 0.2)
        assert 0.15 < loop.time() - started < 2
        await asyncio.wait_for(gone.wait(), 5)
        gone.clear()
        r = await client.post("127.0.0.1", port, "/slow", [], b"", deadline=loop.time() + 0.2)
        assert r.status == 200
        with pytest.raises(TimeoutError):
            await r.read()
        r.release()
        await asyncio.wait_for(gone.wait(), 5)
        done = await _server([LENGTH, LENGTH])  # stays open for a second request
        r = await client.post("127.0.0.1", done[1], "/", [], b"", deadline=loop.time() + 0.1)
        assert await r.read() == b"{}"
        await asyncio.sleep(0.2)  # past the deadline, still unreleased: nothing changes
        r.release()
        assert len(client._pools[("127.0.0.1", done[1], False)].idle) == 1
        done[0].close()
        await client.close()
        await asyncio.sleep(0.05)  # the test server's handler sees the close
    finally:
        await client.close()
        server.close()
