"""kvgate's HTTP/1.1 server: connections, framing, limits and shutdown; parsing is httptools.

It replaces aiohttp's server (``web.Server`` and its ``RequestHandler``) on both front doors'
HTTP ports: the gateway's API and the EPP's metrics port. Why: with ``kvgate serve`` in front
of two instant upstreams on one core, aiohttp's server side (its protocol, request and
response objects, payload writer) was about a quarter of the gateway's CPU per request and
the largest single item (py-spy, 2026-12-07; docs/PERFORMANCE.md, "Gateway overhead"), and
the issue's target (4,500 req/s on one core) is out of reach with it. Parsing stays in a
library made for it: httptools, the binding of llhttp (the parser of Node.js and aiohttp).
What this module adds is small: a request is read whole, then handed to the handler in a
task (one at a time per connection, pipelined requests queued in order), and the answer is
written in one ``write``. ``tests/http1/test_differential.py`` sends the same bytes, hostile
ones included, to this server and to aiohttp's and compares what comes back.

Limits and their answers (always in OpenAI's error shape, then the connection closes):

* a field line over ``max_field_bytes`` or a head over ``max_head_bytes``: 431;
* malformed framing (bad method, bad chunk size, bad Content-Length, ...): 400;
* a body over ``max_body_bytes``: the handler gets the request with ``too_large`` set
  (so it is counted and answered 413 like any other), and nothing more is read;
* a connection that has not completed its first request within ``first_request_timeout_s``
  (slowloris), a body that stops arriving for as long, or a kept-alive connection idle
  for ``keepalive_timeout_s``: closed (a sweeper checks every ``SWEEP_INTERVAL_S``).

A client that disconnects cancels its request's handler (the gateway's answer to that is a
499 and an aborted upstream request). :meth:`HttpServer.stop` stops listening, closes idle
connections, lets handlers run on for a grace period, then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote

import httptools

from kvgate.http1.messages import REASONS, HttpRequest, Response, StreamResponse
from kvgate.openai.errors import error_body

log = logging.getLogger("kvgate.http")

Handler = Callable[[HttpRequest], Awaitable[Response | StreamResponse]]

#: How often idle and slow connections are looked for (and the Date header renewed).
SWEEP_INTERVAL_S = 0.5
#: Timed-out connections closed per loop turn: thousands of idle connections timing out
#: together (an abuser's) closed in one go stalled the loop for tens of milliseconds, and their
#: owners' reconnects then arrived as one burst of accepts (bench_abuse.py,
#: docs/RELIABILITY.md). A sweep closes them in batches this size, ``CLOSE_BATCH_GAP_S`` apart,
#: so well-behaved requests run between batches, each batch (and the burst of accepts its
#: owners' reconnects make) costing the loop well under a millisecond (at most ~3,200 closes
#: a second).
CLOSE_BATCH = 8
CLOSE_BATCH_GAP_S = 0.0025
#: Pipelined requests queued on one connection before it stops reading.
MAX_PIPELINED = 8
#: Headers a handler may not set: the server frames the message itself.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "date"})


class _Refused(Exception):
    """Raised from a parser callback: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (the rest is not read)."""


def _header_block(headers: dict[str, str]) -> str:
    """``Name: value\\r\\n`` lines; a header a handler must not set, or one carrying a line
    break (response splitting), is left out."""
    out = []
    for name, value in headers.items():
        if name.lower() in _FRAMING:
            continue
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            log.warning("response header %r dropped: it contains a line break", name)
            continue
        out.append(f"{name}: {value}\r\n")
    return "".join(out)


class _NoCallbacks:
    """The callbacks of a closed connection's parser: none."""


#: What a closed connection holds instead of its parser (it is never fed).
_DEAD_PARSER = httptools.HttpRequestParser(_NoCallbacks())
_NO_BODY: list[bytes] = []  # a connection's before its first message (never appended to)


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn, writes
    the answers."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        # made at the first byte: a connection that never sends one (thousands of idle
        # abusers) then holds no parser and none of the seven bound callbacks it keeps, all
        # objects the collector would walk while the connection lives
        self._parser: httptools.HttpRequestParser | None = None
        self._transport: asyncio.Transport | None = None
        # the message being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = _NO_BODY  # on_message_begin gives each message its own
        self._body_size = 0
        self._in_head = False
        self._head_bytes = 0
        self._method = "GET"
        self._version = "1.1"
        self._keep_alive = True
        self._path = "/"
        self._query = ""
        # the connection
        self._queue: deque[HttpRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._dead = False  # nothing more is parsed (an error, a 413, or closing)
        self._closing = False  # read nothing more; close once the queue is answered
        self._must_close = False  # close after this answer (its end is the connection's end)
        self._pending_error: tuple[int, str] | None = None
        self._lost = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        #: requests completely received on this connection
        self.requests = 0
        #: loop time by which the next thing must arrive (0: none while a handler runs)
        self.deadline = self._loop.time() + server.first_request_timeout_s

    @property
    def busy(self) -> bool:
        return self._task is not None

    def expired(self, now: float) -> bool:
        """Open, idle (no handler running) and past its deadline: the sweeper closes it."""
        return not self._lost and bool(self.deadline) and now > self.deadline and not self.busy

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop and asyncio both set TCP_NODELAY on accepted TCP sockets themselves)
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._dead = True
        # the parser holds this protocol for its callbacks: drop it, so a closed connection is
        # freed at once by reference counting instead of waiting, a cycle, for a full
        # collection (thousands of closed abusers made those collections pause for 60-80 ms)
        self._parser = _DEAD_PARSER
        self._server.connections.discard(self)
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: its request is abandoned
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client disconnected"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        was_in_head = self._in_head
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # the request asking for it is queued; kvgate upgrades nothing: answer, then close
            self._dead = self._closing = True
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            elif not isinstance(cause, _Stop):
                raise
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
        else:
            # bound what the parser buffers for a head still incomplete: a chunk counts whole
            # once the head began before it (the one it began in may also hold the requests
            # before it, so it is not counted: the bound is the limit plus one read)
            if self._in_head and was_in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self._server.max_head_bytes:
                    limit = self._server.max_head_bytes
                    self._refuse(431, f"request head exceeds the limit of {limit} bytes")

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        if self.requests:  # the first request keeps the connection's own deadline
            self.deadline = self._loop.time() + self._server.first_request_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._server.max_field_bytes:
            limit = self._server.max_field_bytes
            raise _Refused(431, f"a request header field exceeds the limit of {limit} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = text if prev is None else f"{prev}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        assert parser is not None  # a callback of its own feed_data
        self._method = parser.get_method().decode("ascii", "replace")
        self._version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        path = url.path.decode("utf-8", "replace") if url.path else "/"
        self._path = unquote(path) if "%" in path else path
        self._query = url.query.decode("utf-8", "replace") if url.query else ""
        server = self._server
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_body_bytes:
            self._too_large()
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.deadline = self._loop.time() + server.first_request_timeout_s

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._server.max_body_bytes:
            self._too_large()
        self._body.append(body)
        self.deadline = self._loop.time() + self._server.first_request_timeout_s

    def on_message_complete(self) -> None:
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        self._enqueue(
            HttpRequest(
                self._method,
                self._path,
                self._query,
                self._headers,
                body,
                self._version,
                self._keep_alive,
                self,
            )
        )

    # --- requests and answers ----------------------------------------------------------------

    def _too_large(self) -> None:
        """The body passes the limit: the handler answers it (413), nothing more is read."""
        self._body = []
        self._dead = self._closing = True
        request = HttpRequest(
            self._method,
            self._path,
            self._query,
            self._headers,
            b"",
            self._version,
            False,
            self,
            too_large=True,
        )
        self._enqueue(request)
        raise _Stop

    def _enqueue(self, request: HttpRequest) -> None:
        self.requests += 1
        self.deadline = 0.0
        self._queue.append(request)
        if self._task is None:
            self._start_next()
        elif len(self._queue) >= MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def _start_next(self) -> None:
        request = self._queue.popleft()
        self._server.busy += 1
        self._task = self._loop.create_task(self._handle(request))

    async def _handle(self, request: HttpRequest) -> None:
        server = self._server
        try:
            try:
                resp = await server.handler(request)
            except asyncio.CancelledError:
                raise
            except Exception:  # a handler's bug: still answer
                log.exception("request %s %s failed", request.method, request.path)
                resp = Response(500, error_body("internal server error", status=500))
                resp.headers["Content-Type"] = "application/json"
            if self._lost:
                return
            if isinstance(resp, StreamResponse):
                keep = resp.prepared and resp._chunked
                with contextlib.suppress(ConnectionResetError):
                    if not resp.prepared:
                        await resp.prepare(request)
                    await resp.write_eof()
                if not keep:
                    self._must_close = True
            else:
                self.write_response(resp, request)
        finally:
            self._task = None
            server.busy -= 1
            if server.stopping and server.busy == 0:
                server.idle.set()
        self._next(request)

    def _next(self, request: HttpRequest) -> None:
        """After an answer: the next queued request (those before a refused one are still
        answered), then close or wait for the next request."""
        if self._lost or self._transport is None:
            return
        if not request.keep_alive or self._must_close or self._server.stopping:
            self._close_after_answers()
            return
        if self._queue:
            self._start_next()
            if self._reading_paused and len(self._queue) < MAX_PIPELINED // 2:
                self._reading_paused = False
                self._transport.resume_reading()
            return
        if self._closing:
            self._close_after_answers()
            return
        self.deadline = self._loop.time() + self._server.keepalive_timeout_s

    def _close_after_answers(self) -> None:
        assert self._transport is not None
        self._queue.clear()
        if self._pending_error is not None:
            status, message = self._pending_error
            self._pending_error = None
            self._write_error(status, message)
        self._transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed or is over a limit: answer it and close (after
        the answers to the requests before it)."""
        self._dead = self._closing = True
        self._server.num_refused += 1
        log.warning("HTTP %d: %s", status, message)
        if self._task is None and not self._queue and self._transport is not None:
            self._write_error(status, message)
            self._transport.close()
        else:
            self._pending_error = (status, message)

    def _write_error(self, status: int, message: str) -> None:
        body = error_body(message, status=status)
        self.write_response(
            Response(status, body, content_type="application/json"), None, close=True
        )

    def write_response(
        self, resp: Response, request: HttpRequest | None, *, close: bool = False
    ) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        status = resp.status
        body = resp.body
        keep = (
            not close
            and request is not None
            and request.keep_alive
            and not (self._closing and not self._queue)
            and not self._server.stopping
        )
        conn = "keep-alive" if request is not None and request.version == "1.0" else None
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"{_header_block(resp.headers)}Content-Length: {len(body)}\r\n"
            f"Date: {self._server.date}\r\n"
            + ("Connection: close\r\n" if not keep else f"Connection: {conn}\r\n" if conn else "")
            + "\r\n"
        ).encode()
        if request is not None and request.method == "HEAD":
            body = b""
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        if not keep:
            self._must_close = True

    def write_stream_head(
        self, resp: StreamResponse, request: HttpRequest, *, chunked: bool
    ) -> None:
        if self._lost or self._transport is None:
            raise ConnectionResetError("the client disconnected")
        framing = "Transfer-Encoding: chunked\r\n" if chunked else "Connection: close\r\n"
        if chunked and not request.keep_alive:
            framing += "Connection: close\r\n"
        head = (
            f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}\r\n"
            f"{_header_block(resp.headers)}{framing}Date: {self._server.date}\r\n\r\n"
        )
        self._transport.write(head.encode())

    def write(self, data: bytes) -> None:
        if self._lost or self._transport is None:
            raise ConnectionResetError("the client disconnected")
        self._transport.write(data)

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("the client disconnected")
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Listens and serves ``handler`` (see the module docstring); ``start``/``stop`` on one
    event loop."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int = 16 * 1024 * 1024,
        max_head_bytes: int = 65536,
        max_field_bytes: int = 8190,
        first_request_timeout_s: float = 10.0,
        keepalive_timeout_s: float = 75.0,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_field_bytes = max_field_bytes
        self.first_request_timeout_s = first_request_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connections: set[Connection] = set()
        self.busy = 0  # handlers running
        self.stopping = False
        self.idle = asyncio.Event()
        self.date = formatdate(usegmt=True)
        #: connections closed because a request did not arrive in time (slowloris)
        self.num_closed_slow = 0
        #: requests refused before a handler saw them (400 / 431)
        self.num_refused = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = self.loop.create_task(self._sweep())
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.date = formatdate(time.time(), usegmt=True)
            now = self.loop.time()
            expired = [conn for conn in self.connections if conn.expired(now)]
            for start in range(0, len(expired), CLOSE_BATCH):
                if start:
                    await asyncio.sleep(CLOSE_BATCH_GAP_S)
                    now = self.loop.time()
                for conn in expired[start : start + CLOSE_BATCH]:
                    # re-checked: a request may have arrived, or the client left, since the scan
                    if conn.expired(now):
                        if conn.requests == 0 or conn._in_head or conn._body_size:
                            self.num_closed_slow += 1
                        conn.abort()

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float) -> None:
        """Stop listening, close idle connections, give handlers ``grace_s`` to finish,
        then cancel them and close what is left."""
        self.stopping = True
        self.stop_listening()
        for conn in list(self.connections):
            if not conn.busy:
                conn.abort()
        if self.busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), grace_s)
        tasks = [c._task for c in self.connections if c._task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
