"""The ext_proc ``Process`` method served straight from HTTP/2 frames (``--grpc-server h2``).

grpc.aio runs gRPC's C core on its own threads and hands every message to the asyncio loop
through a completion queue; for ext_proc's tiny messages those hand-offs are most of the
cost (docs/PERFORMANCE.md, "Envoy ext_proc endpoint picker"). This server speaks the one
bidirectional-streaming method Envoy calls on the event loop itself, with the ``h2`` state
machine: HTTP/2 framing, HPACK and flow control come from ``h2``; gRPC's own layer is the
5-byte message prefix and the ``grpc-status`` trailer. Each call drives the same
:class:`~kvgate.extproc.server.RequestStream` as the grpcio servicer, and ends through
:meth:`RequestStream.finish` (ResponseComplete hooks, ``kvgate_epp_streams_total``).

How calls end, as gRPC's own servers do:

* Envoy half-closes (``END_STREAM``): our replies, then ``grpc-status: 0``;
* an immediate response ends the HTTP request: it goes out, then ``grpc-status: 0``;
* any other path: ``12 UNIMPLEMENTED``; a message over :data:`MAX_MESSAGE_BYTES`:
  ``8 RESOURCE_EXHAUSTED``; a compressed message (Envoy never compresses ext_proc):
  ``12 UNIMPLEMENTED``; an unparsable one: ``13 INTERNAL``; a failure in kvgate:
  ``2 UNKNOWN`` (grpcio's answer to a servicer exception);
* ``RST_STREAM`` or the connection lost: the stream is finished as broken;
* :meth:`H2ExtProcServer.stop`: ``GOAWAY`` (no new calls), calls in flight get ``grace_s``
  to end, the rest are answered ``14 UNAVAILABLE``.

Replies wait for the peer's flow-control window (stream and connection); received data is
acknowledged as it is parsed (all of it at once: the ext_proc exchange is synchronous).
TLS (``--secure-serving``) uses the asyncio SSL transport with ALPN ``h2``, which gRPC
clients require.
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
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from kvgate.extproc.server import RequestStream

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
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_OK_TRAILERS = ((b"grpc-status", b"0"),)
# Envoy is the only peer and h2 already enforces the framing rules: skip h2's per-header
# validation and normalisation, a measurable share of its cost per message.
_H2_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


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
        self.trailers: tuple[tuple[bytes, bytes], ...] | None = None  # sent once pending is


class ExtProcH2Protocol(asyncio.Protocol):
    """One HTTP/2 connection from Envoy; one :class:`RequestStream` per gRPC call."""

    def __init__(self, server: H2ExtProcServer) -> None:
        self.server = server
        self.conn = H2Connection(_H2_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.draining = False  # GOAWAY sent: no new calls

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # SSL/uvloop transports too
        self.server.connections.add(self)
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
                SettingCodes.MAX_FRAME_SIZE: 1 << 20,
                # h2's default is 100; Envoy multiplexes every request on few connections
                # and a streamed answer keeps its call open (grpcio: no limit)
                SettingCodes.MAX_CONCURRENT_STREAMS: 1 << 20,
            }
        )
        self.conn.increment_flow_control_window(
            WINDOW_BYTES - self.conn.inbound_flow_control_window
        )
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream_id in list(self.calls):
            self._finish(stream_id, clean=False)
        self.calls.clear()
        self.transport = None
        self.server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:  # h2 has queued the GOAWAY that says why
            log.warning("ext_proc: HTTP/2 protocol error from the client: %s", exc)
            self._close()
            return
        received: dict[int, int] = {}  # flow-controlled bytes per stream, acknowledged at once
        for event in events:
            if isinstance(event, DataReceived):
                if event.flow_controlled_length:
                    sid = event.stream_id
                    received[sid] = received.get(sid, 0) + event.flow_controlled_length
                self._on_data(event)
            elif isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, StreamReset):
                self._finish(event.stream_id, clean=False)
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._on_window(event.stream_id)
            elif isinstance(event, RemoteSettingsChanged):
                self._on_window(0)  # a larger initial window frees every waiting stream
            elif isinstance(event, ConnectionTerminated):
                # The client's GOAWAY. h2 sends nothing after one, so calls still open
                # cannot be answered: they end as broken, like a lost connection.
                self._close()
                return
        for sid, size in received.items():
            self.conn.acknowledge_received_data(size, sid)
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
        if self.draining or self.transport is None:
            return
        self.draining = True
        # h2's own close_connection() would also stop it from sending on open streams;
        # a GOAWAY written beside it lets the calls in flight finish.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.conn.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._flush()
        self.transport.write(goaway.serialize())
        if not self.calls:
            self._close()

    def abort(self, message: str) -> None:
        """Answer every call still open with UNAVAILABLE and close the connection."""
        for stream_id in list(self.calls):
            self._end(stream_id, UNAVAILABLE, message)
        self._close()

    # --- calls ---------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self.draining:  # opened before our GOAWAY arrived: the client may retry it
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        path = next((v for k, v in event.headers or () if k == b":path"), b"")
        if path != PROCESS_PATH:
            self.calls[stream_id] = _Call(None)
            name = path.decode("latin-1")
            self._end(stream_id, UNIMPLEMENTED, f"kvgate epp does not serve {name}")
            return
        self.calls[stream_id] = _Call(self.server.new_stream())

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        data = event.data
        call = self.calls.get(stream_id)
        if call is None or call.handler is None:
            return  # answered already (or refused): the rest of the request is dropped
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

    def _on_end(self, stream_id: int) -> None:
        """The client half-closed: the call is over once our replies are out."""
        call = self.calls.get(stream_id)
        if call is None or call.trailers is not None:
            return
        if call.buffer:
            self._end(stream_id, INTERNAL, "the stream ended inside a message")
        else:
            self._end(stream_id, OK, None, clean=True)

    def _send(self, stream_id: int, call: _Call, replies: list[ep.ProcessingResponse]) -> None:
        if not replies:
            return
        if not call.headers_sent:
            self.conn.send_headers(stream_id, _RESPONSE_HEADERS)
            call.headers_sent = True
        parts = [call.pending]
        for reply in replies:
            payload = reply.SerializeToString()
            parts.append(_PREFIX.pack(0, len(payload)))
            parts.append(payload)
        call.pending = b"".join(parts)
        self._drain(stream_id, call)

    def _drain(self, stream_id: int, call: _Call) -> None:
        """Send what the peer's flow-control window allows; the trailers once all is out."""
        conn = self.conn
        try:
            while call.pending:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if window <= 0:
                    return  # resumed by WindowUpdated
                chunk, call.pending = call.pending[:window], call.pending[window:]
                conn.send_data(stream_id, chunk)
            if call.trailers is not None:
                conn.send_headers(stream_id, call.trailers, end_stream=True)
                self._forget(stream_id)
        except StreamClosedError:  # reset by the peer meanwhile
            self._finish(stream_id, clean=False)
            self._forget(stream_id)

    def _on_window(self, stream_id: int) -> None:
        targets = list(self.calls) if stream_id == 0 else [stream_id]
        for sid in targets:
            call = self.calls.get(sid)
            if call is not None and (call.pending or call.trailers is not None):
                self._drain(sid, call)

    def _end(self, stream_id: int, status: int, message: str | None, clean: bool = False) -> None:
        """Finish the call and send its trailers (after any replies still waiting)."""
        call = self.calls.get(stream_id)
        if call is None or call.trailers is not None:
            return
        if status == OK and call.headers_sent:
            trailers: tuple[tuple[bytes, bytes], ...] = _OK_TRAILERS
        else:
            status_line = [(b"grpc-status", str(status).encode())]
            if message:
                status_line.append((b"grpc-message", _grpc_message(message)))
            # nothing sent yet: a trailers-only response carries the headers too
            head = () if call.headers_sent else _RESPONSE_HEADERS
            call.headers_sent = True
            trailers = (*head, *status_line)
        call.trailers = trailers
        self._finish(stream_id, clean=clean or status == OK)
        try:
            self._drain(stream_id, call)
        except H2Error:  # the stream is gone on h2's side (reset, connection closing)
            self._forget(stream_id)

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

    def _forget(self, stream_id: int) -> None:
        self.calls.pop(stream_id, None)
        if self.draining and not self.calls:
            self._close()


class H2ExtProcServer:
    """The listening socket and its connections; :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        new_stream: Callable[[], RequestStream],
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.new_stream = new_stream
        self.max_message_bytes = max_message_bytes
        self.connections: set[ExtProcH2Protocol] = set()
        self._server: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ExtProcH2Protocol(self), host, port, ssl=ssl_context
        )

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
