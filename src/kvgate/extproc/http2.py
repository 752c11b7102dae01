"""The server side of one HTTP/2 connection, as much of RFC 9113 as a gRPC server needs.

kvgate.extproc.h2server serves Envoy's ext_proc calls over it. It replaces the ``h2``
library, which spent about half of the EPP's CPU per request in pure-Python frame objects,
event objects and state machines: 150 µs per lean ext_proc request with ``h2`` against 25 µs
here in the same loop-free micro-benchmark (docs/PERFORMANCE.md, "A hand-written HTTP/2
codec"). tests/extproc/test_http2_differential.py feeds this codec and ``h2`` the same
generated and hostile byte streams and lists every place they differ on purpose, with the
RFC 9113 rule that decides it. Here frames are parsed
from one buffer with ``struct`` and handed to a :class:`Handler` as plain calls, and the
header blocks kvgate sends are constant byte strings. HPACK decoding is the ``hpack``
package's (its dynamic table must follow the peer's).

What it does: the connection preface and SETTINGS (the peer's initial window, frame size
and header-table size are honoured), PING answers, flow control both ways (a DATA frame
is consumed as it arrives, so windows are topped up once half used; replies wait for the
peer's windows, :meth:`ServerConnection.send_window`), HEADERS with CONTINUATION, padding
and priority fields, RST_STREAM and GOAWAY both ways, and trailers. What it refuses, with
a GOAWAY that says why: frames that break the framing rules (:class:`Http2Error`, the only
exception :meth:`ServerConnection.receive` raises). Stream errors are raised to the
connection (RFC 9113 §5.4.1 allows it; a gRPC peer sends none). Memory per connection is
bounded: a frame over ``max_frame_bytes`` is refused from its 9-byte header, a header
block (HEADERS + CONTINUATION) over twice ``max_header_list_bytes`` before it is buffered,
and at most ``max_concurrent_streams`` streams are open (advertised in SETTINGS; a HEADERS
opening one more is answered RST_STREAM REFUSED_STREAM, RFC 9113 §5.1.2).
Server push, stream priorities and the extended CONNECT method are not used by gRPC and
not offered. Outbound header blocks never use the HPACK dynamic table (a table-size
update to 0 opens the first block, and any block after the peer changes the table size).
"""

from __future__ import annotations

import struct
from typing import Protocol

from hpack import Decoder, HPACKError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6
# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x7, 0x8, 0x9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
#: Streams a peer may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
#: Envoy opens one ext_proc stream per HTTP request in flight and spreads them over
#: connections; RFC 9113's unlimited default (and Envoy's own 2^31-1) would let one peer
#: hold unbounded per-stream state. ``kvgate epp --max-concurrent-streams`` sets it.
DEFAULT_MAX_CONCURRENT_STREAMS = 1024
_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")


class Http2Error(Exception):
    """The peer broke HTTP/2's rules: the connection ends with a GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Handler(Protocol):
    """What a :class:`ServerConnection` reports, as it parses."""

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_data(self, stream_id: int, data: bytes) -> None: ...
    def on_end(self, stream_id: int) -> None: ...
    def on_reset(self, stream_id: int) -> None: ...
    def on_window(self) -> None: ...  # send windows grew: replies waiting may go out
    def on_goaway(self) -> None: ...


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def literal_header(name: bytes, value: bytes) -> bytes:
    """HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = [limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Stream:
    __slots__ = ("recv_window", "remote_closed", "send_window")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window  # what we may still send on it
        self.recv_window = recv_window  # what the peer may still send on it
        self.remote_closed = False


class ServerConnection:
    """Parse what the peer sends, frame what we send; I/O is the caller's."""

    def __init__(
        self,
        handler: Handler,
        *,
        window_bytes: int = 16 * 1024 * 1024,
        max_frame_bytes: int = 1 << 20,
        max_header_list_bytes: int = 64 * 1024,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    ) -> None:
        if not 1 <= max_concurrent_streams <= MAX_WINDOW:
            raise ValueError(
                f"max_concurrent_streams: expected 1..{MAX_WINDOW}, got {max_concurrent_streams}"
            )
        if not DEFAULT_WINDOW <= window_bytes <= MAX_WINDOW:
            raise ValueError(
                f"window_bytes: expected {DEFAULT_WINDOW}..{MAX_WINDOW}, got {window_bytes}"
            )
        if not 16_384 <= max_frame_bytes <= 16_777_215:
            raise ValueError(f"max_frame_bytes: expected 16384..16777215, got {max_frame_bytes}")
        self.handler = handler
        self.max_concurrent_streams = max_concurrent_streams
        self.refused_streams = 0  # HEADERS refused with REFUSED_STREAM over the limit
        self.out: list[bytes] = []
        self.streams: dict[int, _Stream] = {}
        self.highest_stream_id = 0
        self.goaway_sent = False
        self._buffer = b""
        self._preface_seen = False
        self._decoder = Decoder(max_header_list_bytes)
        # An encoded block is never longer than the header list it decodes to (RFC 7541's
        # literals cost at most 9 bytes over the name and value, which the list counts with
        # 32): a longer one, or a CONTINUATION flood, is refused before it is buffered.
        self._max_header_block = 2 * max_header_list_bytes
        self._decoded: dict[bytes, tuple[tuple[int, int, object], list[tuple[bytes, bytes]]]] = {}
        # header block being assembled from HEADERS + CONTINUATION: (stream, end_stream, data)
        self._continuation: tuple[int, bool, bytearray] | None = None
        # receiving: our window sizes (streams get the larger one once the peer acks it)
        self._window_bytes = window_bytes
        self._stream_recv_initial = DEFAULT_WINDOW
        self._settings_acked = False
        self._conn_recv_window = window_bytes
        self._max_inbound_frame = max_frame_bytes
        # sending: the peer's settings
        self._stream_send_initial = DEFAULT_WINDOW
        self.conn_send_window = DEFAULT_WINDOW
        self.max_outbound_frame = 16_384
        self._table_size_update = True  # our blocks start with "dynamic table size 0"
        self.out.append(
            frame(
                SETTINGS,
                0,
                0,
                _SETTING.pack(ENABLE_PUSH, 0)
                + _SETTING.pack(MAX_CONCURRENT_STREAMS, max_concurrent_streams)
                + _SETTING.pack(INITIAL_WINDOW_SIZE, window_bytes)
                + _SETTING.pack(MAX_FRAME_SIZE, max_frame_bytes)
                + _SETTING.pack(MAX_HEADER_LIST_SIZE, max_header_list_bytes),
            )
        )
        if window_bytes > DEFAULT_WINDOW:  # an increment of 0 is a PROTOCOL_ERROR
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(window_bytes - DEFAULT_WINDOW)))

    # --- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def send_headers(self, stream_id: int, block: bytes, *, end_stream: bool = False) -> None:
        """Send an HPACK block built without the dynamic table (:func:`literal_header`)."""
        if self._table_size_update:
            block = b"\x20" + block
            self._table_size_update = False
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        limit = self.max_outbound_frame
        if len(block) <= limit:
            self.out.append(frame(HEADERS, flags, stream_id, block))
        else:  # a long grpc-message: CONTINUATION frames carry the rest
            self.out.append(frame(HEADERS, flags & ~END_HEADERS, stream_id, block[:limit]))
            rest = block[limit:]
            while rest:
                piece, rest = rest[:limit], rest[limit:]
                self.out.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece))
        if end_stream:
            self._local_end(stream_id)

    def send_window(self, stream_id: int) -> int:
        """Bytes of DATA that may go out on the stream now (both windows, one frame)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(stream.send_window, self.conn_send_window, self.max_outbound_frame)

    def send_data(self, stream_id: int, data: bytes) -> None:
        """One DATA frame; the caller keeps it within :meth:`send_window`."""
        stream = self.streams[stream_id]
        size = len(data)
        stream.send_window -= size
        self.conn_send_window -= size
        self.out.append(frame(DATA, 0, stream_id, data))

    def reset(self, stream_id: int, code: int) -> None:
        self.out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))
        self.streams.pop(stream_id, None)

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """No new streams: the ones up to :attr:`highest_stream_id` may still finish."""
        payload = _GOAWAY.pack(self.highest_stream_id, code) + message.encode()[:256]
        self.out.append(frame(GOAWAY, 0, 0, payload))
        self.goaway_sent = True

    def _local_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.remote_closed:
            # the answer is complete: tell the peer to stop sending (gRPC servers do)
            self.out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(NO_ERROR)))
        del self.streams[stream_id]

    # --- input ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Parse ``data`` (any split), calling the handler; raises :class:`Http2Error`."""
        buf = self._buffer + data if self._buffer else data
        pos = 0
        if not self._preface_seen:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(buf):
                    raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._buffer = buf
                return
            if not buf.startswith(PREFACE):
                raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface_seen = True
            pos = len(PREFACE)
        end = len(buf)
        unpack = _HEADER.unpack_from
        while end - pos >= 9:
            hi, lo, kind, flags, stream_id = unpack(buf, pos)
            size = (hi << 8) | lo
            if size > self._max_inbound_frame:
                raise Http2Error(FRAME_SIZE_ERROR, f"frame of {size} bytes")
            if end - pos - 9 < size:
                break
            start = pos + 9
            pos = start + size
            stream_id &= 0x7FFFFFFF
            if self._continuation is not None and kind != CONTINUATION:
                raise Http2Error(PROTOCOL_ERROR, "header block interrupted")
            if kind == DATA:
                self._on_data(stream_id, flags, buf, start, size)
            elif kind == HEADERS:
                self._on_headers(stream_id, flags, buf[start:pos])
            elif kind == CONTINUATION:
                self._on_continuation(stream_id, flags, buf[start:pos])
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, buf[start:pos])
            elif kind == SETTINGS:
                self._on_settings(stream_id, flags, buf[start:pos])
            elif kind == PING:
                if stream_id:
                    raise Http2Error(PROTOCOL_ERROR, f"PING on stream {stream_id}")
                if size != 8:
                    raise Http2Error(FRAME_SIZE_ERROR, f"PING of {size} bytes, expected 8")
                if not flags & ACK:
                    self.out.append(frame(PING, ACK, 0, buf[start:pos]))
            elif kind == RST_STREAM:
                self._on_reset(stream_id, size)
            elif kind == GOAWAY:
                if stream_id:
                    raise Http2Error(PROTOCOL_ERROR, f"GOAWAY on stream {stream_id}")
                if size < 8:
                    raise Http2Error(FRAME_SIZE_ERROR, f"GOAWAY of {size} bytes, expected >= 8")
                self.handler.on_goaway()
            elif kind == PRIORITY:  # checked, then ignored: gRPC has no use for priorities
                if stream_id == 0:
                    raise Http2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
                if size != 5:
                    raise Http2Error(FRAME_SIZE_ERROR, f"PRIORITY of {size} bytes, expected 5")
            elif kind == PUSH_PROMISE:
                raise Http2Error(PROTOCOL_ERROR, "a client cannot push")
            # unknown frame types are ignored (RFC 9113 §5.5)
        self._buffer = buf[pos:] if pos < end else b""

    def _on_reset(self, stream_id: int, size: int) -> None:
        if stream_id == 0:
            raise Http2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if size != 4:
            raise Http2Error(FRAME_SIZE_ERROR, f"RST_STREAM of {size} bytes, expected 4")
        if self.streams.pop(stream_id, None) is not None:
            self.handler.on_reset(stream_id)
        elif stream_id > self.highest_stream_id or not stream_id & 1:
            raise Http2Error(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")

    def _on_data(self, stream_id: int, flags: int, buf: bytes, start: int, size: int) -> None:
        if stream_id == 0:
            raise Http2Error(PROTOCOL_ERROR, "DATA on stream 0")
        if flags & PADDED and (size < 1 or buf[start] >= size):
            raise Http2Error(PROTOCOL_ERROR, "bad DATA padding")
        self._conn_recv_window -= size
        if self._conn_recv_window < 0:
            raise Http2Error(FLOW_CONTROL_ERROR, "connection window exceeded")
        if self._conn_recv_window <= self._window_bytes // 2:
            self.out.append(
                frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._window_bytes - self._conn_recv_window))
            )
            self._conn_recv_window = self._window_bytes
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.highest_stream_id or not stream_id & 1:
                raise Http2Error(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # answered and forgotten (or reset): the rest is dropped
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise Http2Error(FLOW_CONTROL_ERROR, f"stream {stream_id} window exceeded")
        end_stream = bool(flags & END_STREAM)
        if not end_stream and stream.recv_window <= self._stream_recv_initial // 2:
            grow = self._stream_recv_initial - stream.recv_window
            self.out.append(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(grow)))
            stream.recv_window += grow
        end = start + size
        if flags & PADDED:  # the pad length was checked above
            end -= buf[start]
            start += 1
        if end > start:
            self.handler.on_data(stream_id, buf[start:end])
        if end_stream:
            self._remote_end(stream_id, stream)

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise Http2Error(FRAME_SIZE_ERROR, "HEADERS too short for its pad length")
            end -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
        if start > len(payload):
            raise Http2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
        if end < start:
            raise Http2Error(PROTOCOL_ERROR, "bad HEADERS padding")
        if not stream_id & 1:  # a server's stream id: after the framing checks, as h2 orders them
            raise Http2Error(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = payload[start:end]
        if len(block) > self._max_header_block:
            raise Http2Error(COMPRESSION_ERROR, "header block over the header list limit")
        if flags & END_HEADERS:
            self._on_header_block(stream_id, bool(flags & END_STREAM), block)
        else:
            self._continuation = (stream_id, bool(flags & END_STREAM), bytearray(block))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise Http2Error(PROTOCOL_ERROR, "unexpected CONTINUATION")
        pending[2].extend(payload)
        if len(pending[2]) > self._max_header_block:  # a CONTINUATION flood
            raise Http2Error(COMPRESSION_ERROR, "header block over the header list limit")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, pending[1], bytes(pending[2]))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """HPACK-decode ``block``, from the cache when that cannot change the dynamic table.

        Envoy sends the same header block for every ext_proc call (its headers never vary)
        but with ``:path`` as a Huffman-coded literal that is never indexed: decoding it
        is a tenth of the EPP's CPU per request. A block that left the dynamic table as it
        was decodes the same way for as long as the table is unchanged: same size limit,
        same length, same newest entry (entries only enter at the front, and leave at the
        back only to make room for one or when the limit shrinks).
        """
        table = self._decoder.header_table
        entries = table.dynamic_entries
        state = (table.maxsize, len(entries), entries[0] if entries else None)
        cached = self._decoded.get(block)
        if cached is not None:
            seen, headers = cached
            if seen[0] == state[0] and seen[1] == state[1] and seen[2] is state[2]:
                return headers
        try:
            headers = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except HPACKError as exc:
            raise Http2Error(COMPRESSION_ERROR, f"HPACK: {exc}") from exc
        after = (table.maxsize, len(entries), entries[0] if entries else None)
        if after[0] == state[0] and after[1] == state[1] and after[2] is state[2]:
            if len(self._decoded) >= 64:
                self._decoded.clear()
            self._decoded[block] = (state, headers)
        return headers

    def _on_header_block(self, stream_id: int, end_stream: bool, block: bytes) -> None:
        headers = self._decode(block)  # always: the HPACK dynamic table follows the peer's
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if not end_stream:  # RFC 9113 §8.1: trailers end the stream
                raise Http2Error(PROTOCOL_ERROR, f"trailers without END_STREAM on {stream_id}")
            if not stream.remote_closed:
                self._remote_end(stream_id, stream)
            return
        if stream_id <= self.highest_stream_id:
            return  # a stream we already answered and forgot
        self.highest_stream_id = stream_id
        if self.goaway_sent:
            self.out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        if len(self.streams) >= self.max_concurrent_streams:
            # RFC 9113 §5.1.2: over the advertised limit is a stream error; REFUSED_STREAM
            # tells the client nothing was processed, so it may retry on another connection.
            # The stream is never opened: a DATA frame that follows is on a closed stream.
            self.refused_streams += 1
            self.out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        stream = self.streams[stream_id] = _Stream(
            self._stream_send_initial, self._stream_recv_initial
        )
        self.handler.on_request(stream_id, headers)
        if end_stream and stream_id in self.streams:
            self._remote_end(stream_id, stream)

    def _remote_end(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        self.handler.on_end(stream_id)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2Error(FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if increment == 0:  # a stream error in RFC 9113 §6.9, raised to the connection here
            raise Http2Error(PROTOCOL_ERROR, f"WINDOW_UPDATE of 0 on stream {stream_id}")
        if stream_id == 0:
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise Http2Error(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if stream_id > self.highest_stream_id or not stream_id & 1:
                    raise Http2Error(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise Http2Error(FLOW_CONTROL_ERROR, f"stream {stream_id} window overflow")
        self.handler.on_window()

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise Http2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if not self._settings_acked:  # our larger stream window applies from now
                self._settings_acked = True
                grow = self._window_bytes - self._stream_recv_initial
                self._stream_recv_initial = self._window_bytes
                for stream in self.streams.values():
                    stream.recv_window += grow
            return
        if len(payload) % 6:
            raise Http2Error(FRAME_SIZE_ERROR, "malformed SETTINGS")
        grew = False
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2Error(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._stream_send_initial
                self._stream_send_initial = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise Http2Error(FLOW_CONTROL_ERROR, "initial window overflows a stream")
                grew = grew or delta > 0
            elif key == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise Http2Error(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self.max_outbound_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise Http2Error(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            elif key == HEADER_TABLE_SIZE:
                self._table_size_update = True  # say again that we use none of it
        self.out.append(frame(SETTINGS, ACK, 0))
        if grew:
            self.handler.on_window()
