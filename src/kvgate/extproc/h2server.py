"""The ext_proc ``Process`` method served straight from HTTP/2 frames (``--grpc-server h2``).

grpc.aio runs gRPC's C core on its own threads and hands every message to the asyncio loop
through a completion queue; for ext_proc's tiny messages those hand-offs are most of the
cost (docs/PERFORMANCE.md, "Envoy ext_proc endpoint picker"). This server speaks the one
bidirectional-streaming method Envoy calls on the event loop itself: HTTP/2 framing, HPACK
and flow control come from :mod:`kvgate.extproc.http2`; gRPC's own layer is the 5-byte
message prefix and the ``grpc-status`` trailer. Each call drives the same
:class:`~kvgate.extproc.stream.RequestStream` as the grpcio servicer, and ends through
:meth:`RequestStream.finish` (ResponseComplete hooks, ``kvgate_epp_streams_total``).

How calls end, as gRPC's own servers do:

* Envoy half-closes (``END_STREAM``): our replies, then ``grpc-status: 0``;
* an immediate response ends the HTTP request: it goes out, then ``grpc-status: 0``;
* any other path: ``12 UNIMPLEMENTED``; a message over :data:`MAX_MESSAGE_BYTES`:
  ``8 RESOURCE_EXHAUSTED``; a compressed message (Envoy never compresses ext_proc):
  ``12 UNIMPLEMENTED``; an unparsable one: ``13 INTERNAL``; a failure in kvgate:
  ``2 UNKNOWN`` (grpcio's answer to a servicer exception);
* ``RST_STREAM``, the client's ``GOAWAY`` or the connection lost: the call is finished as
  broken (a GOAWAY lets calls in flight end first);
* :meth:`H2ExtProcServer.stop`: ``GOAWAY`` (no new calls), calls in flight get ``grace_s``
  to end, the rest are answered ``14 UNAVAILABLE``.

A connection holds at most ``max_concurrent_streams`` calls at once (advertised in SETTINGS;
one more is refused with ``RST_STREAM REFUSED_STREAM``, which Envoy retries elsewhere).
Replies wait for the peer's flow-control windows. TLS (``--secure-serving``) uses the
asyncio SSL transport with ALPN ``h2``, which gRPC clients require.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.message import DecodeError

from kvgate.errors import KvgateError
from kvgate.extproc import http2
from kvgate.extproc.stream import RequestStream

log = logging.getLogger("kvgate.epp")

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
#: Largest gRPC message accepted. grpcio's default receive limit is 4 MiB; a BUFFERED body
#: can be larger than that (Envoy's per-request buffer limit decides), so allow more.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Receive window per stream and for the connection: bodies flow without WINDOW_UPDATE waits.
WINDOW_BYTES = 16 * 1024 * 1024

# gRPC status codes (grpc/include/grpc/impl/codegen/status.h)
OK, UNKNOWN, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 0, 2, 8, 12, 13, 14

_PREFIX = struct.Struct(">BI")
# Header blocks that never change, encoded once (HPACK without the dynamic table).
_RESPONSE_HEADERS = b"\x88" + http2.literal_header(b"content-type", b"application/grpc")
_OK_TRAILERS = http2.literal_header(b"grpc-status", b"0")


def _grpc_message(text: str) -> bytes:
    """``grpc-message`` is percent-encoded outside printable ASCII (and ``%`` itself)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


class _Call:
    """One gRPC call on a connection: its RequestStream and what waits to be sent."""

    __slots__ = ("buffer", "handler", "headers_sent", "pending", "trailers")

    def __init__(self, handler: RequestStream | None) -> None:
        self.handler = handler  # None once finished (or for an unknown method)
        self.buffer = b""  # the start of a message split across DATA frames
        self.headers_sent = False
        self.pending = b""  # reply bytes waiting for the peer's flow-control window
        self.trailers: bytes | None = None  # HPACK block, sent once pending is out


class ExtProcH2Protocol(asyncio.Protocol):
    """One HTTP/2 connection from Envoy; one :class:`RequestStream` per gRPC call."""

    def __init__(self, server: H2ExtProcServer) -> None:
        self.server = server
        self.conn = http2.ServerConnection(
            self,
            window_bytes=WINDOW_BYTES,
            max_concurrent_streams=server.max_concurrent_streams,
        )
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.draining = False  # GOAWAY sent or received: no new calls

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # SSL/uvloop transports too
        self.server.connections.add(self)
        self._flush()  # our SETTINGS

    def connection_lost(self, exc: Exception | None) -> None:
        for stream_id in list(self.calls):
            self._finish(stream_id, clean=False)
        self.calls.clear()
        self.transport = None
        self.server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive(data)
        except http2.Http2Error as exc:
            log.warning("ext_proc: HTTP/2 error from the client, closing: %s", exc)
            self.conn.goaway(exc.code, str(exc))
            self._close()
            return
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()  # connection_lost finishes what is left

    def drain(self) -> None:
        """Stop taking calls (GOAWAY); close once the calls in flight have ended."""
        if self.transport is None:
            return
        if not self.conn.goaway_sent:
            self.conn.goaway()
        self.draining = True
        if self.calls:
            self._flush()
        else:
            self._close()

    def abort(self, message: str) -> None:
        """Answer every call still open with UNAVAILABLE and close the connection."""
        for stream_id in list(self.calls):
            self._end(stream_id, UNAVAILABLE, message)
        self._close()

    # --- http2.Handler -------------------------------------------------------------------

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        path = next((v for k, v in headers if k == b":path"), b"")
        if path != PROCESS_PATH:
            self.calls[stream_id] = _Call(None)
            name = path.decode("latin-1")
            self._end(stream_id, UNIMPLEMENTED, f"kvgate epp does not serve {name}")
            return
        handler = self.server.new_stream()
        handler.emit = lambda replies: self._deferred(stream_id, replies)
        self.calls[stream_id] = _Call(handler)

    def _deferred(self, stream_id: int, replies: list[ep.ProcessingResponse]) -> None:
        """Replies a RequestStream decided later (flow control held the request)."""
        call = self.calls.get(stream_id)
        if call is None or call.handler is None:
            return
        self._send(stream_id, call, replies)
        if call.handler.closed:
            self._end(stream_id, OK, None)
        if self.transport is not None:
            self._flush()

    def on_data(self, stream_id: int, data: bytes) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.handler is None:
            return  # answered already: the rest of the request is dropped
        handler = call.handler
        if call.buffer:
            data = call.buffer + data
            call.buffer = b""
        view = memoryview(data)
        end = len(data)
        limit = self.server.max_message_bytes
        pos = 0
        replies: list[ep.ProcessingResponse] = []
        while end - pos >= 5:
            compressed, length = _PREFIX.unpack_from(data, pos)
            if length > limit:
                self._send(stream_id, call, replies)
                self._end(
                    stream_id,
                    RESOURCE_EXHAUSTED,
                    f"message of {length} bytes is over the {limit}-byte limit",
                )
                return
            if end - pos - 5 < length:
                break
            if compressed:
                self._send(stream_id, call, replies)
                self._end(stream_id, UNIMPLEMENTED, "compressed ext_proc messages are not served")
                return
            try:
                msg = ep.ProcessingRequest.FromString(view[pos + 5 : pos + 5 + length])
            except DecodeError as exc:
                self._send(stream_id, call, replies)
                self._end(stream_id, INTERNAL, f"could not parse ProcessingRequest: {exc}")
                return
            pos += 5 + length
            try:
                replies += handler.on_message(msg)
            except Exception as exc:
                log.exception("ext_proc call failed")
                self._send(stream_id, call, replies)
                self._end(stream_id, UNKNOWN, f"{type(exc).__name__}: {exc}")
                return
            if handler.closed:  # an immediate response ended the HTTP request
                self._send(stream_id, call, replies)
                self._end(stream_id, OK, None)
                return
        if pos < end:
            call.buffer = data[pos:]
        if replies:
            self._send(stream_id, call, replies)

    def on_end(self, stream_id: int) -> None:
        """The client half-closed: the call is over once our replies are out."""
        call = self.calls.get(stream_id)
        if call is None or call.trailers is not None:
            return
        if call.buffer:
            self._end(stream_id, INTERNAL, "the stream ended inside a message")
        else:
            self._end(stream_id, OK, None, clean=True)

    def on_reset(self, stream_id: int) -> None:
        self._finish(stream_id, clean=False)
        self.calls.pop(stream_id, None)
        self._close_if_drained()

    def on_window(self) -> None:
        for stream_id, call in list(self.calls.items()):
            if call.pending or call.trailers is not None:
                self._drain(stream_id, call)

    def on_goaway(self) -> None:
        # The client closes this connection; calls already open may still end normally
        # (RFC 9113 §6.8), then the connection is closed.
        self.draining = True
        self._close_if_drained()

    # --- calls ---------------------------------------------------------------------------

    def _send(self, stream_id: int, call: _Call, replies: list[ep.ProcessingResponse]) -> None:
        if not replies:
            return
        if not call.headers_sent:
            self.conn.send_headers(stream_id, _RESPONSE_HEADERS)
            call.headers_sent = True
        parts = [call.pending] if call.pending else []
        for reply in replies:
            payload = reply.SerializeToString()
            parts.append(_PREFIX.pack(0, len(payload)))
            parts.append(payload)
        call.pending = b"".join(parts)
        self._drain(stream_id, call)

    def _drain(self, stream_id: int, call: _Call) -> None:
        """Send what the peer's flow-control windows allow; the trailers once all is out."""
        conn = self.conn
        if stream_id not in conn.streams:  # reset meanwhile: nothing more goes out
            self.calls.pop(stream_id, None)
            self._close_if_drained()
            return
        while call.pending:
            window = conn.send_window(stream_id)
            if window <= 0:
                return  # resumed by on_window
            if window >= len(call.pending):
                conn.send_data(stream_id, call.pending)
                call.pending = b""
            else:
                conn.send_data(stream_id, call.pending[:window])
                call.pending = call.pending[window:]
        if call.trailers is not None:
            conn.send_headers(stream_id, call.trailers, end_stream=True)
            self.calls.pop(stream_id, None)
            self._close_if_drained()

    def _end(self, stream_id: int, status: int, message: str | None, clean: bool = False) -> None:
        """Finish the call and send its trailers (after any replies still waiting)."""
        call = self.calls.get(stream_id)
        if call is None or call.trailers is not None:
            return
        if status == OK and call.headers_sent:
            trailers = _OK_TRAILERS
        else:
            trailers = http2.literal_header(b"grpc-status", str(status).encode())
            if message:
                trailers += http2.literal_header(b"grpc-message", _grpc_message(message))
            if not call.headers_sent:  # a trailers-only response carries the headers too
                trailers = _RESPONSE_HEADERS + trailers
                call.headers_sent = True
        call.trailers = trailers
        self._finish(stream_id, clean=clean or status == OK)
        self._drain(stream_id, call)

    def _finish(self, stream_id: int, *, clean: bool) -> None:
        """The call is over (answered, reset, connection gone): finish its RequestStream."""
        call = self.calls.get(stream_id)
        if call is None or call.handler is None:
            return
        handler, call.handler = call.handler, None
        try:
            handler.finish(clean)
        except Exception:
            log.exception("ext_proc: finishing a call failed")

    def _close_if_drained(self) -> None:
        if self.draining and not self.calls:
            self._close()


class H2ExtProcServer:
    """The listening socket and its connections; :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        new_stream: Callable[[], RequestStream],
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_concurrent_streams: int = http2.DEFAULT_MAX_CONCURRENT_STREAMS,
    ) -> None:
        self.new_stream = new_stream
        self.max_message_bytes = max_message_bytes
        #: per connection; calls over it are refused with RST_STREAM REFUSED_STREAM
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[ExtProcH2Protocol] = set()
        self._server: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ExtProcH2Protocol(self), host, port, ssl=ssl_context
            )
        except OSError as exc:  # e.g. the port is taken
            raise KvgateError(f"--grpc-port {port}: cannot listen on {host}: {exc}") from exc

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def connection_closed(self, protocol: ExtProcH2Protocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def stop(self, grace_s: float) -> None:
        """No new connections or calls; calls in flight get ``grace_s`` to end."""
        if self._server is None:
            return
        self._server.close()
        self._all_closed = asyncio.Event()
        if not self.connections:
            self._all_closed.set()
        for protocol in list(self.connections):
            protocol.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), grace_s)
        for protocol in list(self.connections):
            protocol.abort("kvgate epp is shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), 1.0)
        await self._server.wait_closed()
        self._server = None


def server_ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS for --secure-serving: the EPP's certificate, ALPN h2 (gRPC clients require it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as folder:  # ssl loads key pairs from files only
        cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx
