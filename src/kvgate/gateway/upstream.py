"""A lean HTTP/1.1 client for the model servers: keep-alive pools on asyncio protocols.

The relay needs little of a general client: POST a body, read the status and headers,
then either the whole body (Content-Length or chunked) or its chunks as they arrive. No
cookies, redirects, proxies, compression or multiplexing. It replaces aiohttp's client:
measured in the same gateway, that client (request and response objects, timers, cookie
jar, header normalisation) was the largest single cost, and this one costs about half the
CPU per request (docs/PERFORMANCE.md, "aiohttp's client replaced").

Parsing follows RFC 9112 as ``h11`` reads it; tests/gateway/test_upstream_differential.py
serves the same generated and broken answers to both and asserts they agree (1xx answers
skipped, obs-fold joined, chunk extensions and trailers ignored; a bad status line, header
line, Content-Length, Transfer-Encoding or chunk size refused). Buffers are capped: the head
and a chunked body's trailers at 64 KiB, a chunk-size line at 4 KiB. An answer with bytes
past its end retires its connection instead of leaving them for the next request.

Errors are raised as :class:`UpstreamConnectError` (nothing was answered: refused, reset,
closed before the status line; safe to retry elsewhere), :class:`UpstreamStreamError` (the
answer broke off after it started) and ``TimeoutError`` (the ``deadline`` given to
:meth:`UpstreamClient.post` passed: one timer per answer, which closes its connection, instead
of an ``asyncio.timeout`` around each await -- those were 5 % of the gateway's CPU per request). A reused keep-alive connection that
the server closed meanwhile is retried once on a fresh connection, since nothing was sent
back on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

_MAX_HEADER_BYTES = 64 * 1024  # the status line and headers, and a chunked body's trailers
_MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size line with its extensions
_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [^\r\n]*)?")
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


def _parse_header_lines(lines: list[str]) -> list[tuple[str, str]] | None:
    """``name: value`` pairs after the status line; None for a malformed line. A line that
    starts with white space continues the previous value (obs-fold, RFC 9112 §5.2)."""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not headers:
                return None
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():  # no white space before the colon
            return None
        headers.append((name, value.strip()))
    return headers


_HIGH_WATER = 1 << 20  # pause reading from the server past this much unread body


class UpstreamConnectError(ConnectionError):
    """The request got no answer at all (connect failed, or closed before a status line)."""


class UpstreamStreamError(ConnectionError):
    """The answer started but broke off (server closed mid-body, bad framing)."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.resp: UpstreamResponse | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.used = 0  # responses completed on this connection
        self.paused = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # unsolicited bytes: the connection is unusable
            self._fail(UpstreamStreamError("unexpected data from server"))
            return
        if not resp.head_done:
            self.buf += data
            if not self._parse_head(resp):
                return
            data = bytes(self.buf)
            self.buf.clear()
            if not data:
                return
        resp._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._discard(self)
        resp = self.resp
        if resp is None:
            return
        if not resp.head_done:
            self._fail(UpstreamConnectError(f"connection closed before an answer: {exc or 'EOF'}"))
        else:
            resp._eof(closed=True)

    # --- parsing ----------------------------------------------------------------------------

    def _parse_head(self, resp: UpstreamResponse) -> bool:
        """Parse the status line and headers once they are all in; interim (1xx) answers are
        skipped. False while incomplete, or after failing the response."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0 or end > _MAX_HEADER_BYTES:
                if end > 0 or len(self.buf) > _MAX_HEADER_BYTES:
                    self._fail(UpstreamStreamError("response headers over 64 KiB"))
                return False
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            status = _STATUS_LINE.fullmatch(lines[0])
            if status is None:
                self._fail(UpstreamStreamError(f"bad status line {lines[0][:80]!r}"))
                return False
            resp.status = int(status.group(1))
            headers = _parse_header_lines(lines)
            if headers is None:
                self._fail(UpstreamStreamError("bad header line in the response"))
                return False
            if resp.status == 101:  # never asked for: nothing after it is HTTP/1.1
                self._fail(UpstreamStreamError("unexpected 101 Switching Protocols"))
                return False
            if resp.status >= 200:
                break
            # 1xx: an interim answer (100 Continue, 103 Early Hints); the final one follows
        resp.headers = headers
        lengths: set[str] = set()
        chunked = False
        keep_alive = True
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":  # "5, 5" is one length (RFC 9110 §8.6)
                lengths.update(v.strip() for v in value.split(","))
            elif lower == "transfer-encoding":
                if value.lower() != "chunked":  # no other coding is ever asked for
                    self._fail(UpstreamStreamError(f"unsupported Transfer-Encoding {value!r}"))
                    return False
                chunked = True
            elif lower == "connection":
                keep_alive = "close" not in value.lower()
            elif lower == "content-type":
                resp.content_type = value
        length: int | None = None
        if lengths and not chunked:  # RFC 9112 §6.3: Transfer-Encoding overrides it
            value = lengths.pop()
            if lengths or not _DIGITS.fullmatch(value):
                self._fail(UpstreamStreamError("bad Content-Length"))
                return False
            length = int(value)
        resp.keep_alive = keep_alive and not (chunked and lengths)
        if chunked:
            resp._mode = "chunked"
        elif length is not None:
            resp._mode = "length"
            resp._remaining = length
        elif resp.status in (204, 304):
            resp._mode = "length"
            resp._remaining = 0
        else:
            resp._mode = "close"  # read until the server closes
            resp.keep_alive = False
        resp.head_done = True
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if resp._mode == "length" and resp._remaining == 0:
            resp._eof(closed=False)
        return True

    def _fail(self, exc: Exception) -> None:
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.resp is not None and self.resp.head_done:
            self.resp._error(exc)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # flow control for slow consumers
    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()


@dataclass(eq=False)
class UpstreamResponse:
    """Status, headers and body of one answer; read it with :meth:`read` or :meth:`iter_chunks`,
    then :meth:`release` (always; also on errors, which closes the connection)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = ""
    keep_alive: bool = True
    head_done: bool = False
    _conn: _Conn | None = None
    _mode: str = ""
    _remaining: int = 0
    _chunk_buf: bytearray = field(default_factory=bytearray)
    _chunks: collections.deque[bytes] = field(default_factory=collections.deque)
    _buffered: int = 0
    _done: bool = False
    _exc: Exception | None = None
    _waiter: asyncio.Future[None] | None = None
    _released: bool = False
    _timer: asyncio.TimerHandle | None = None

    def _expire(self) -> None:
        """The deadline passed: fail whoever waits (head or body) and close the connection."""
        self._timer = None
        if self._done:  # all in (or already failed): nothing is waiting on the server
            return
        exc = TimeoutError("the upstream answer did not finish before the deadline")
        conn = self._conn
        if conn is not None:
            waiter = conn.head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        self._exc = exc
        self._done = True
        self._wake()
        if conn is not None:
            conn.abort()

    def cancel(self, reason: str) -> None:
        """End the answer now (flow control evicted the request): a reader gets
        ``UpstreamStreamError(reason)`` at once, whatever is buffered is dropped, and the
        connection is closed, which makes the server abort the request."""
        if self._done and self._exc is not None:
            return
        exc = UpstreamStreamError(reason)
        conn = self._conn
        if conn is not None:  # still waiting for the head: post() raises it
            waiter = conn.head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        self._chunks.clear()
        self._buffered = 0
        self._exc = exc
        self._done = True
        self._wake()
        if conn is not None:
            conn.abort()

    # --- fed by the connection --------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER and self._conn is not None:
                self._conn.pause()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._done:
            self.keep_alive = False  # bytes past the end of the answer: out of step
            return
        if self._mode == "length":
            if len(data) > self._remaining:
                self.keep_alive = False
            take = data[: self._remaining]
            self._remaining -= len(take)
            self._push(take)
            if self._remaining <= 0:
                self._eof(closed=False)
        elif self._mode == "chunked":
            self._feed_chunked(data)
        else:
            self._push(data)

    def _feed_chunked(self, data: bytes) -> None:
        """Strip chunked framing (RFC 9112 §7.1). ``_remaining`` is the data left in the
        current chunk, -2 while its CRLF is due, 0 while a size line is due, -1 for the
        trailers after the last chunk."""
        buf = self._chunk_buf
        buf += data
        out: list[bytes] = []
        while True:
            if self._remaining > 0:  # inside a chunk's data
                take = bytes(buf[: self._remaining])
                del buf[: len(take)]
                self._remaining -= len(take)
                out.append(take)
                if self._remaining > 0:
                    break
                self._remaining = -2  # expect CRLF after data
            if self._remaining == -2:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    self._error(UpstreamStreamError("chunk data not followed by CRLF"))
                    return
                del buf[:2]
                self._remaining = 0
            if self._remaining == -1:  # trailers (ignored), up to an empty line
                if buf[:2] == b"\r\n":
                    end = 0
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEADER_BYTES:
                            self._error(UpstreamStreamError("chunked trailers over 64 KiB"))
                            return
                        break
                    end += 2
                if len(buf) > end + 2:
                    self.keep_alive = False  # bytes past the end of the answer
                buf.clear()
                if out:
                    self._push(b"".join(out))
                self._eof(closed=False)
                return
            line_end = buf.find(b"\r\n")
            if line_end < 0 or line_end > _MAX_CHUNK_LINE_BYTES:
                if line_end > 0 or len(buf) > _MAX_CHUNK_LINE_BYTES:
                    self._error(UpstreamStreamError("chunk-size line over 4 KiB"))
                    return
                break
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                self._error(UpstreamStreamError(f"bad chunk size {size_text[:20]!r}"))
                return
            del buf[: line_end + 2]
            self._remaining = int(size_text, 16) or -1
        if out:
            self._push(out[0] if len(out) == 1 else b"".join(out))

    def _eof(self, *, closed: bool) -> None:
        if self._done:
            return
        if closed and self._mode in ("length", "chunked"):
            self._error(UpstreamStreamError("server closed the connection mid-answer"))
            return
        self._done = True
        conn = self._conn
        if conn is not None and not closed:
            conn.used += 1
        self._wake()

    def _error(self, exc: Exception) -> None:
        if self._done and self._exc is None and not self._chunks:
            return
        self._exc = exc
        self._done = True
        self._wake()

    # --- consumer side ----------------------------------------------------------------------

    async def _next(self) -> bytes | None:
        while not self._chunks:
            if self._done:
                if self._exc is not None:
                    raise self._exc
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._conn is not None and self._conn.paused and self._buffered < _HIGH_WATER // 2:
            self._conn.resume()
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunked framing removed)."""
        while True:
            data = await self._next()
            if data is None:
                return
            yield data

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back if the answer was read whole, else close it (which makes
        the server abort the request)."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        conn.resp = None
        conn.head_waiter = None
        if self._done and self._exc is None and self.keep_alive and not conn.closed:
            conn.pool._put_back(conn)
        else:
            conn.abort()


class _HostPool:
    """Idle keep-alive connections to one host:port (LIFO, so warm ones are reused)."""

    def __init__(self, client: UpstreamClient, host: str, port: int, tls: bool) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.tls = tls
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()

    def _discard(self, conn: _Conn) -> None:
        self.all.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def _put_back(self, conn: _Conn) -> None:
        if len(self.idle) < self.client.max_idle_per_host:
            self.idle.append(conn)
        else:
            conn.abort()

    async def connect(self, timeout_s: float, *, deadline_bound: bool = False) -> _Conn:
        """A new connection; ``deadline_bound``: ``timeout_s`` is what is left before the
        request's deadline, so running out is a TimeoutError (not a connect failure)."""
        loop = asyncio.get_running_loop()
        ssl_ctx = self.client._ssl_context() if self.tls else None
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=ssl_ctx
                )
        except TimeoutError as exc:
            if deadline_bound:
                raise
            raise UpstreamConnectError(
                f"connect to {self.host}:{self.port} timed out after {timeout_s}s"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.all.add(conn)
        return conn


class UpstreamClient:
    """Keep-alive HTTP/1.1 client for the relay; one per gateway."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        verify_tls: bool = True,
        max_idle_per_host: int = 256,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.verify_tls = verify_tls
        self.max_idle_per_host = max_idle_per_host
        self._pools: dict[tuple[str, int, bool], _HostPool] = {}
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if not self.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        tls: bool = False,
        host_header: str | None = None,
        deadline: float | None = None,
        sent: Callable[[UpstreamResponse], None] | None = None,
    ) -> UpstreamResponse:
        """Send a POST and wait for the status line and headers (not the body).

        ``deadline`` (event-loop time) bounds the whole exchange, connect included: past it,
        the wait for the head, or for the body's next bytes, raises TimeoutError. ``sent`` is
        given the answer as soon as the request is written, before its head arrives (so a
        caller may :meth:`UpstreamResponse.cancel` it while it waits)."""
        key = (host, port, tls)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _HostPool(self, host, port, tls)
        lines = [f"POST {path} HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\n"]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            reused = bool(pool.idle)
            if reused:
                conn = pool.idle.pop()
            elif deadline is not None and deadline - loop.time() < self.connect_timeout_s:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError("the deadline passed before connecting")
                conn = await pool.connect(left, deadline_bound=True)
            else:
                conn = await pool.connect(self.connect_timeout_s)
            if conn.closed:
                continue
            resp = UpstreamResponse(_conn=conn)
            conn.resp = resp
            if deadline is not None:
                resp._timer = loop.call_at(deadline, resp._expire)
            waiter = loop.create_future()
            conn.head_waiter = waiter
            assert conn.transport is not None
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            if sent is not None:
                sent(resp)
            try:
                await waiter
            except UpstreamConnectError:
                resp.release()
                if reused and attempt == 0:
                    continue  # the server had closed this idle connection: try a fresh one
                raise
            except BaseException:
                resp.release()
                raise
            return resp
        raise UpstreamConnectError(f"{host}:{port} closed every connection")  # pragma: no cover

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in list(pool.all):
                conn.abort()
            pool.idle.clear()
            pool.all.clear()
        self._pools.clear()
