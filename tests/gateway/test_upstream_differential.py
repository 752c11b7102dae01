"""kvgate.gateway.upstream against ``h11`` on the same answers, valid and broken.

A raw loopback server writes a generated answer byte for byte (optionally in pieces) and
closes; kvgate's client posts to it and reads the body, and ``h11`` (the HTTP/1.1 parser of
httpx and uvicorn) reads the same bytes as the client of the same request. Both must agree
on the outcome: the status and body, or a refusal. kvgate's refusals are
:class:`UpstreamConnectError` (nothing answered) or :class:`UpstreamStreamError`, nothing
else, within the deadline; a connection whose answer had bytes past its end is not reused.

The places they differ on purpose are asserted in tests of their own below (each says why).
``KVGATE_FUZZ_EXAMPLES=N`` runs N generated answers instead of the quick default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamStreamError

EXAMPLES = int(os.environ.get("KVGATE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=timedelta(seconds=5))
REQUEST_BODY = b'{"model":"m"}'


@dataclass(frozen=True)
class Answer:
    """What a client made of an answer: ("ok", status, body) or ("refused", reason)."""

    ok: bool
    status: int = 0
    body: bytes = b""
    reason: str = ""


class OneShotServer:
    """A loopback server that answers each request with ``wire`` (in ``piece``-byte writes),
    then closes; :meth:`close` waits until every connection's handler has finished, so no
    socket outlives the test."""

    def __init__(self, wire: bytes, piece: int = 0, keep_alive: bool = False) -> None:
        self.wire, self.piece, self.keep_alive = wire, piece, keep_alive
        self.connections = 0
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        step = self.piece or len(self.wire) or 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(len(REQUEST_BODY))
                for i in range(0, len(self.wire), step):
                    writer.write(self.wire[i : i + step])
                    await writer.drain()
                if not self.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up: what the test is about, often
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)


async def kvgate_reads(wire: bytes, piece: int = 0) -> Answer:
    server = OneShotServer(wire, piece)
    port = await server.start()
    client = UpstreamClient()
    try:
        async with asyncio.timeout(5):
            try:
                resp = await client.post("127.0.0.1", port, "/v1/x", [], REQUEST_BODY)
            except (UpstreamConnectError, UpstreamStreamError) as exc:
                return Answer(False, reason=str(exc))
            try:
                body = await resp.read()
            except UpstreamStreamError as exc:
                return Answer(False, reason=str(exc))
            finally:
                resp.release()
            return Answer(True, resp.status, body)
    finally:
        await client.close()
        await server.close()


def h11_reads(wire: bytes) -> Answer:
    """h11 as the client of the same POST, fed the answer and then the server's close."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    conn.send(
        h11.Request(
            method="POST",
            target="/v1/x",
            headers=[("Host", "x"), ("Content-Length", str(len(REQUEST_BODY)))],
        )
    )
    conn.send(h11.Data(data=REQUEST_BODY))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    conn.receive_data(b"")
    status, body = 0, b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Answer(True, status, body)
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return Answer(False, reason="closed before the end of the answer")
            elif event is h11.PAUSED:  # pragma: no cover - a client never pauses mid-answer
                return Answer(False, reason="paused")
    except h11.RemoteProtocolError as exc:
        return Answer(False, reason=str(exc))


def both(wire: bytes, piece: int = 0) -> tuple[Answer, Answer]:
    return asyncio.run(kvgate_reads(wire, piece)), h11_reads(wire)


# --- generated answers ---------------------------------------------------------------------

token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
header = st.one_of(
    st.tuples(token, st.text("abc xyz/;=", max_size=20)),
    st.tuples(st.sampled_from(["Content-Type", "Connection"]), st.sampled_from(["close", "x"])),
)


@st.composite
def chunked_body(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(wire, body) of a chunked body, sometimes broken."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    wire, body = b"", b""
    for chunk in chunks:
        n = len(chunk)
        good = [f"{n:x}", f"{n:X}", f"{n:x};ext=1", f"{n:x} "]
        size = draw(st.sampled_from([*good, "-1", f"0x{n:x}", f"+{n:x}", "1_0", "zz", ""]))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"XX"]))
        wire += size.encode() + b"\r\n" + chunk + end
        body += chunk
    wire += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nx-t: 1\r\n\r\n", b"0\r\n", b""]))
    return wire, body


@st.composite
def answer(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from(["200 OK", "200", "404 Not Found", "500 x", "204 No", "2000 x"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "FOO"]))
    interim = draw(st.sampled_from([b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    headers = [f"{k}: {v}" for k, v in draw(st.lists(header, max_size=3))]
    framing = draw(st.sampled_from(["length", "length", "chunked", "close", "both", "bad"]))
    payload = draw(st.binary(max_size=60))
    if framing == "chunked" or framing == "both":
        body, _ = draw(chunked_body())
        headers.append("Transfer-Encoding: chunked")
        if framing == "both":
            headers.append(f"Content-Length: {len(body)}")
    else:
        body = payload
        if framing == "length":
            delta = draw(st.sampled_from([0, 0, 0, -1, 3]))
            headers.append(f"Content-Length: {max(len(body) + delta, 0)}")
        elif framing == "bad":
            value = draw(st.sampled_from(["-1", "+5", "1_0", "abc", "5, 5", "", "0x5"]))
            headers.append(f"Content-Length: {value}")
    head = f"{version} {status}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    wire = interim + head.encode("latin-1") + body
    return wire[: draw(st.integers(0, len(wire)))] if draw(st.booleans()) else wire


def comparable(kvgate: Answer, reference: Answer) -> tuple[Answer, Answer]:
    """Refusals compare equal whatever their wording."""
    if not kvgate.ok and not reference.ok:
        return Answer(False), Answer(False)
    return kvgate, reference


@FUZZ
@given(answer(), st.sampled_from([0, 1, 7]))
def test_generated_answers_read_as_h11_reads_them(wire: bytes, piece: int) -> None:
    kvgate, reference = both(wire, piece)
    if reference.ok and reference.status in (204, 304):
        return  # h11 says a 204 has no body whatever its headers say: see the test below
    assert comparable(kvgate, reference) == comparable(reference, reference), (kvgate, reference)


# --- hostile answers, one by one -----------------------------------------------------------

BAD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",  # early close
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nName : v\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # early close
    b"HTTP/1.1 200 OK\r\n",  # closed inside the headers
    b"",  # closed before a status line
]


@pytest.mark.parametrize("wire", BAD, ids=range(len(BAD)))
async def test_broken_answers_are_refused_by_both(wire: bytes) -> None:
    kvgate = await kvgate_reads(wire)
    reference = h11_reads(wire)
    assert not kvgate.ok and kvgate.reason, kvgate
    assert not reference.ok, reference


async def test_interim_answers_are_skipped() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert await kvgate_reads(wire) == h11_reads(wire) == Answer(True, 200, b"ok")


async def test_obs_fold_and_chunk_extensions_and_trailers_read_as_h11_reads_them() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;name=value\r\nok\r\n1 \r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert await kvgate_reads(wire) == h11_reads(wire) == Answer(True, 200, b"ok!")


async def test_huge_headers_and_size_lines_are_refused_at_their_caps() -> None:
    """The head, a chunk-size line and the trailers are buffered only up to their caps,
    whether or not the server ever ends them (the server here never does)."""
    huge_head = b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024)
    huge_line = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 5000
    huge_trailer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"t" * 70_000
    for wire, reason in [
        (huge_head, "headers over 64 KiB"),
        (huge_line, "chunk-size line over 4 KiB"),
        (huge_trailer, "trailers over 64 KiB"),
    ]:
        kvgate = await kvgate_reads(wire + b"\r\n", piece=1000)
        assert not kvgate.ok and reason in kvgate.reason, kvgate
        assert not h11_reads(wire).ok


async def test_a_204_with_a_content_length_is_a_documented_difference() -> None:
    """h11 follows RFC 9112 §6.3 (a 204 has no body, whatever Content-Length says); kvgate
    trusts the Content-Length, since the relay forwards what the model server sends and a
    model server never answers 204. Both end the answer without error."""
    wire = b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok"
    assert await kvgate_reads(wire) == Answer(True, 204, b"ok")
    assert h11_reads(wire) == Answer(True, 204, b"")


async def test_bytes_past_the_end_of_an_answer_retire_the_connection() -> None:
    """A server that sends more than it announced is out of step: the next request must
    not read the rest as its own answer."""
    for extra in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nEXTRA",
    ):
        server = OneShotServer(extra, keep_alive=True)
        port = await server.start()
        client = UpstreamClient()
        try:
            for _ in range(2):
                resp = await client.post("127.0.0.1", port, "/", [], REQUEST_BODY)
                assert await resp.read() == b"ok"
                resp.release()
            assert server.connections == 2
        finally:
            await client.close()
            await server.close()
