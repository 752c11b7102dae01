"""kvgate.http1's server against aiohttp's, on the same bytes: valid requests (generated with
Hypothesis, pipelined, chunked, HTTP/1.0) must be read the same (method, path, query,
headers, body) and answered; hostile ones refused with the same class of status.

Both servers run in this process on loopback, each with an echo handler, and each request is
sent as raw bytes over a fresh TCP connection. Documented, tested differences: a field line
over the limit is 431 here and 400 in aiohttp (both refuse it); an unsupported Upgrade is
answered and the connection closed here (aiohttp hands the socket to the handler); a
request with ``Expect: 100-continue`` gets its interim 100 here (aiohttp's low-level server
sends none, so such a client waits its own timeout, curl's one second, before sending).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.http1 import HttpRequest, HttpServer, Response

HIDDEN = {"host", "content-length", "transfer-encoding", "connection", "expect"}


def _echo(method: str, path: str, query: str, headers: dict[str, bytes], body: bytes) -> bytes:
    seen = {k: v.hex() for k, v in headers.items() if k not in HIDDEN}
    return json.dumps(
        {"method": method, "path": path, "query": query, "headers": seen, "body": body.hex()},
        sort_keys=True,
    ).encode()


async def ours(req: HttpRequest) -> Response:
    if req.too_large:
        return Response(413, b"too large")
    # header values are latin-1 here: each byte as it came (the upstream client writes them
    # back the same way)
    raw = {k: v.encode("latin-1") for k, v in req.headers.items()}
    body = _echo(req.method, req.path, req.query_string, raw, req.body)
    return Response(200, body, content_type="application/json")


async def theirs(req: web.BaseRequest) -> web.Response:
    body = await req.read()
    if len(body) > LIMIT:
        return web.Response(status=413, body=b"too large")
    headers: dict[str, bytes] = {}
    for name, value in req.headers.items():  # UTF-8 with surrogate escapes in aiohttp
        key = name.lower()
        raw = value.encode("utf-8", "surrogateescape")
        headers[key] = raw if key not in headers else headers[key] + b", " + raw
    return web.Response(
        body=_echo(req.method, req.path, req.query_string, headers, body),
        content_type="application/json",
    )


LIMIT = 4096


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int]]:
    mine = HttpServer(ours, max_body_bytes=LIMIT, first_request_timeout_s=5)
    port = await mine.start("127.0.0.1", 0)
    runner = web.ServerRunner(web.Server(theirs, handler_cancellation=True), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    their_port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        yield port, their_port
    finally:
        await mine.stop(1)
        await runner.cleanup()


async def exchange(port: int, data: bytes, timeout_s: float = 3.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``timeout_s``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    with __import__("contextlib").suppress(ConnectionError):
        await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                out += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return out


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each final response in ``raw`` (1xx skipped)."""
    out: list[tuple[int, bytes]] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if status < 200:
            raw = rest
            continue
        if b"content-length" in fields:
            n = int(fields[b"content-length"])
            body, raw = rest[:n], rest[n:]
        elif fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
            raw = rest
        else:
            body, raw = rest, b""
        out.append((status, body))
    return out


async def both(servers: tuple[int, int], data: bytes) -> tuple[list[Any], list[Any]]:
    mine, theirs_ = await asyncio.gather(exchange(servers[0], data), exchange(servers[1], data))
    return responses(mine), responses(theirs_)


def same(mine: list[tuple[int, bytes]], theirs_: list[tuple[int, bytes]]) -> None:
    assert [s for s, _ in mine] == [s for s, _ in theirs_], (mine, theirs_)
    for (status, a), (_, b) in zip(mine, theirs_, strict=True):
        if status == 200:
            assert json.loads(a) == json.loads(b)


# --- valid requests ------------------------------------------------------------------------

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%20", min_size=1, max_size=8)


@st.composite
def requests_(draw: Callable[..., Any]) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + "/".join(draw(st.lists(segment, max_size=4))).replace("%", "%25")
    query = draw(st.one_of(st.just(""), st.text(alphabet="abc=&xyz019", max_size=20)))
    headers = draw(st.lists(st.tuples(token.map(lambda t: "x-" + t), value), max_size=6))
    body = draw(st.binary(max_size=300)) if method in ("POST", "PUT", "PATCH") else b""
    chunked = bool(body) and draw(st.booleans())
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", "Host: test"]
    lines += [f"{n}: {v}" for n, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        parts = [p for p in (body[:cut], body[cut:]) if p]
        payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=requests_())
async def test_generated_requests_are_read_alike(servers: tuple[int, int], data: bytes) -> None:
    mine, theirs_ = await both(servers, data)
    assert len(mine) == 1 and mine[0][0] == 200, mine
    same(mine, theirs_)


async def test_pipelined_keepalive_and_http10(servers: tuple[int, int]) -> None:
    one = b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    two = b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    three = b"GET /c%20d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    mine, theirs_ = await both(servers, one + two + three)
    assert [s for s, _ in mine] == [200, 200, 200]
    same(mine, theirs_)
    for old in (b"GET /old HTTP/1.0\r\n\r\n", b"GET /\r\n\r\n"):  # 1.0, and 0.9's shape
        mine, theirs_ = await both(servers, old)
        assert [s for s, _ in mine] == [200]
        same(mine, theirs_)


async def test_expect_100_continue(servers: tuple[int, int]) -> None:
    data = (
        b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi"
    )
    raw = await exchange(servers[0], data)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), raw[:80]
    same(*await both(servers, data))


# --- hostile requests ------------------------------------------------------------------------

HOSTILE = {
    "bad-method": b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n",
    "bad-version": b"GET / HTTP/9.x\r\nHost: t\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "negative-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n",
    "body-too-large": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000,
    "chunked-too-large": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%b\r\n" % (5000, b"a" * 5000)
        + b"0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_requests_are_refused_alike(servers: tuple[int, int], name: str) -> None:
    mine, theirs_ = await both(servers, HOSTILE[name])
    assert mine and theirs_, (mine, theirs_)
    assert mine[0][0] // 100 == theirs_[0][0] // 100 == 4, (mine, theirs_)
    assert mine[0][0] == theirs_[0][0]


async def test_oversized_field_is_431_here_400_there(servers: tuple[int, int]) -> None:
    data = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    mine, theirs_ = await both(servers, data)
    assert mine[0][0] == 431 and theirs_[0][0] == 400
    body = json.loads(mine[0][1])
    assert "exceeds the limit" in body["error"]["message"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=requests_(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255))))
async def test_mutated_requests_never_hang_or_crash(
    servers: tuple[int, int], data: bytes, flips: list[tuple[int, int]]
) -> None:
    """Byte flips anywhere: ours answers something well-formed (or closes) within the timeout
    and agrees with aiohttp whenever both accepted the request."""
    raw = bytearray(data)
    for at, byte in flips:
        raw[at % len(raw)] = byte
    mine, theirs_ = await both(servers, bytes(raw))
    for status, _ in mine:
        assert 200 <= status < 600
    if mine and theirs_ and mine[0][0] == theirs_[0][0] == 200:
        assert json.loads(mine[0][1]) == json.loads(theirs_[0][1])


async def test_pipelined_large_bodies_are_not_taken_for_a_long_head(
    servers: tuple[int, int],
) -> None:
    """A read holding a request with a large body and the start of the next head: the body's
    bytes do not count towards the next head's limit."""
    body = b"a" * 4000
    one = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4000\r\n\r\n" + body
    many = one * 20 + b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    mine, theirs_ = await both(servers, many)
    assert [s for s, _ in mine] == [200] * 21
    same(mine, theirs_)


async def test_an_endless_head_is_refused() -> None:
    server = HttpServer(ours, max_head_bytes=4096, first_request_timeout_s=5)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Endless: ")
        raw = b""
        try:
            for _ in range(50):
                writer.write(b"a" * 1000)
                await writer.drain()
                await asyncio.sleep(0.001)
            async with asyncio.timeout(5):
                raw = await reader.read()
        except ConnectionError:
            pass  # closed with our bytes unread: the kernel may reset before the answer
        writer.close()
        assert server.num_refused == 1
        assert raw == b"" or raw.startswith(b"HTTP/1.1 431 "), raw[:80]
    finally:
        await server.stop(1)
