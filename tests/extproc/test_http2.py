"""kvgate.extproc.http2: the server side of HTTP/2, fed frames built here byte by byte.

The gRPC client and Envoy exercise it end to end (test_h2server.py, test_server.py,
tests/e2e/test_envoy.py); these tests reach what they never send: padding, CONTINUATION,
priority fields, windows at their edges, odd splits and broken framing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hpack import Decoder, Encoder

from kvgate.extproc import http2
from kvgate.extproc.http2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ServerConnection,
    frame,
)

REQUEST = [
    (b":method", b"POST"),
    (b":path", b"/svc/Method"),
    (b"content-type", b"application/grpc"),
]


@dataclass
class Recorder:
    """The http2.Handler side: what the connection reported, in order."""

    seen: list[tuple[str, int, object]] = field(default_factory=list)

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.seen.append(("request", stream_id, [tuple(h) for h in headers]))

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.seen.append(("data", stream_id, data))

    def on_end(self, stream_id: int) -> None:
        self.seen.append(("end", stream_id, None))

    def on_reset(self, stream_id: int) -> None:
        self.seen.append(("reset", stream_id, None))

    def on_window(self) -> None:
        self.seen.append(("window", 0, None))

    def on_goaway(self) -> None:
        self.seen.append(("goaway", 0, None))


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        hi, lo, kind, flags, stream_id = struct.unpack_from(">HBBBL", data, pos)
        size = (hi << 8) | lo
        out.append((kind, flags, stream_id, data[pos + 9 : pos + 9 + size]))
        pos += 9 + size
    return out


def settings(**values: int) -> bytes:
    codes = {"initial_window": 4, "max_frame": 5, "header_table": 1}
    payload = b"".join(struct.pack(">HL", codes[k], v) for k, v in values.items())
    return frame(SETTINGS, 0, 0, payload)


def connect(**peer_settings: int) -> tuple[ServerConnection, Recorder]:
    recorder = Recorder()
    conn = ServerConnection(recorder, window_bytes=1 << 20, max_frame_bytes=1 << 16)
    ours = frames(conn.data_to_send())
    assert ours[0][0] == SETTINGS and ours[1][0] == WINDOW_UPDATE
    conn.receive(PREFACE + settings(**peer_settings) + frame(SETTINGS, http2.ACK, 0))
    assert frames(conn.data_to_send()) == [(SETTINGS, http2.ACK, 0, b"")]
    return conn, recorder


def test_a_request_split_at_every_byte_reads_the_same() -> None:
    block = Encoder().encode(REQUEST)
    wire = (
        PREFACE
        + settings()
        + frame(HEADERS, END_HEADERS, 1, block)
        + frame(DATA, 0, 1, b"hello ")
        + frame(DATA, END_STREAM, 1, b"world")
    )
    recorder = Recorder()
    conn = ServerConnection(recorder)
    for i in range(len(wire)):
        conn.receive(wire[i : i + 1])
    assert recorder.seen == [
        ("request", 1, REQUEST),
        ("data", 1, b"hello "),
        ("data", 1, b"world"),
        ("end", 1, None),
    ]


def test_padding_priority_and_continuation() -> None:
    conn, recorder = connect()
    block = Encoder().encode(REQUEST)
    first = b"\x03" + b"\x00\x00\x00\x00\x10" + block[:4] + b"\x00\x00\x00"  # pad 3, priority
    conn.receive(
        frame(HEADERS, PADDED | PRIORITY_FLAG, 3, first)
        + frame(CONTINUATION, END_HEADERS, 3, block[4:])
        + frame(DATA, PADDED | END_STREAM, 3, b"\x02abc\x00\x00")
    )
    assert recorder.seen == [("request", 3, REQUEST), ("data", 3, b"abc"), ("end", 3, None)]


def test_ping_is_answered() -> None:
    conn, _ = connect()
    conn.receive(frame(PING, 0, 0, b"12345678"))
    assert frames(conn.data_to_send()) == [(PING, http2.ACK, 0, b"12345678")]


def test_receive_windows_are_topped_up_once_half_used() -> None:
    conn, recorder = connect()
    conn.receive(frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    # the stream window is 1 MiB once the peer acked our SETTINGS; half of it used -> update
    conn.receive(frame(DATA, 0, 1, b"x" * (1 << 16)) * 8)
    updates = [f for f in frames(conn.data_to_send()) if f[0] == WINDOW_UPDATE]
    assert updates == [
        (WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 19)),
        (WINDOW_UPDATE, 0, 1, struct.pack(">L", 1 << 19)),
    ]
    assert len(recorder.seen) == 9


def test_a_peer_sending_past_the_window_breaks_the_connection() -> None:
    conn = ServerConnection(Recorder(), window_bytes=1 << 20, max_frame_bytes=1 << 16)
    # our SETTINGS are not acked yet: the stream window is still HTTP/2's 65,535 bytes
    conn.receive(PREFACE + settings() + frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    with pytest.raises(http2.Http2Error) as err:
        conn.receive(frame(DATA, 0, 1, b"y" * 65_536))
    assert err.value.code == http2.FLOW_CONTROL_ERROR


def test_send_windows_follow_settings_and_window_updates() -> None:
    conn, recorder = connect(initial_window=100, max_frame=20_000)
    conn.receive(frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    assert conn.send_window(1) == 100
    conn.send_data(1, b"z" * 100)
    assert conn.send_window(1) == 0
    conn.receive(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 50_000)))
    assert ("window", 0, None) in recorder.seen
    assert conn.send_window(1) == 20_000  # the peer's MAX_FRAME_SIZE
    conn.receive(settings(initial_window=1000))  # +900 for every open stream
    assert conn.send_window(1) == 20_000
    assert conn.streams[1].send_window == 50_000 + 900
    assert conn.conn_send_window == http2.DEFAULT_WINDOW - 100


def test_our_header_blocks_use_no_dynamic_table() -> None:
    conn, _ = connect()
    conn.receive(frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    block = b"\x88" + http2.literal_header(b"content-type", b"application/grpc")
    conn.send_headers(1, block)
    conn.receive(settings(header_table=256))
    conn.send_headers(1, http2.literal_header(b"grpc-status", b"0"), end_stream=True)
    out = frames(conn.data_to_send())
    sent = [f for f in out if f[0] == HEADERS]
    decoder = Decoder()
    assert sent[0][3][:1] == b"\x20" and sent[1][3][:1] == b"\x20"  # table size 0, twice
    assert decoder.decode(sent[0][3], raw=True) == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
    ]
    assert decoder.decode(sent[1][3], raw=True) == [(b"grpc-status", b"0")]
    assert sent[1][1] & END_STREAM
    # the answer is complete before the request: the client is told to stop sending
    assert out[-1] == (RST_STREAM, 0, 1, struct.pack(">L", http2.NO_ERROR))


def test_a_long_header_block_goes_out_in_continuation_frames() -> None:
    conn, _ = connect()
    conn.receive(frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    block = http2.literal_header(b"grpc-message", b"m" * 40_000)
    conn.send_headers(1, block, end_stream=True)
    sent = frames(conn.data_to_send())
    assert [(k, f) for k, f, _, _ in sent[:3]] == [
        (HEADERS, END_STREAM),
        (CONTINUATION, 0),
        (CONTINUATION, END_HEADERS),
    ]
    assert Decoder().decode(b"".join(p for _, _, _, p in sent[:3]), raw=True) == [
        (b"grpc-message", b"m" * 40_000)
    ]


def test_after_goaway_new_streams_are_refused_and_old_ones_finish() -> None:
    conn, recorder = connect()
    encoder = Encoder()
    conn.receive(frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.goaway()
    conn.receive(frame(HEADERS, END_HEADERS, 3, encoder.encode(REQUEST)))
    conn.receive(frame(DATA, END_STREAM, 1, b"late"))
    out = frames(conn.data_to_send())
    assert out[0] == (GOAWAY, 0, 0, struct.pack(">LL", 1, http2.NO_ERROR))
    assert (RST_STREAM, 0, 3, struct.pack(">L", http2.REFUSED_STREAM)) in out
    assert [kind for kind, sid, _ in recorder.seen] == ["request", "data", "end"]
    assert all(sid == 1 for _, sid, _ in recorder.seen)


def test_a_reset_reaches_the_handler_once() -> None:
    conn, recorder = connect()
    conn.receive(frame(HEADERS, END_HEADERS, 1, Encoder().encode(REQUEST)))
    conn.receive(frame(RST_STREAM, 0, 1, struct.pack(">L", http2.CANCEL)) * 2)
    assert recorder.seen[1:] == [("reset", 1, None)]
    assert conn.send_window(1) == 0


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", http2.PROTOCOL_ERROR),
        (PREFACE + frame(DATA, 0, 0, b"x"), http2.PROTOCOL_ERROR),
        (PREFACE + frame(PING, 0, 0, b"short"), http2.FRAME_SIZE_ERROR),
        (PREFACE + frame(HEADERS, 0, 1, b"") + frame(DATA, 0, 1, b""), http2.PROTOCOL_ERROR),
        (PREFACE + frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff"), http2.COMPRESSION_ERROR),
        (PREFACE + struct.pack(">HBBBL", 0x7FFF, 0, DATA, 0, 1), http2.FRAME_SIZE_ERROR),
    ],
    ids=["http1", "data-on-stream-0", "short-ping", "interrupted-block", "bad-hpack", "huge"],
)
def test_broken_framing_ends_the_connection(wire: bytes, code: int) -> None:
    conn = ServerConnection(Recorder())
    with pytest.raises(http2.Http2Error) as err:
        conn.receive(wire)
    assert err.value.code == code


def test_repeated_header_blocks_decode_as_a_fresh_decoder_would() -> None:
    """Envoy repeats one header block per call; the cache of decoded blocks must never
    outlive a change of the HPACK dynamic table."""
    encoder = Encoder()
    other = [(b":path", b"/x"), (b"x-new", b"1")]
    blocks = [encoder.encode(REQUEST)]  # literals: enter the dynamic table
    repeat = encoder.encode(REQUEST)  # indexed: leaves the table alone
    blocks += [repeat, repeat, encoder.encode(other), repeat, encoder.encode(REQUEST), repeat]
    conn, recorder = connect()
    reference = Decoder()
    for i, block in enumerate(blocks):
        conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, block))
        expected = [tuple(h) for h in reference.decode(block, raw=True)]
        assert recorder.seen[-2] == ("request", 2 * i + 1, expected)
    assert recorder.seen[3 * 2 - 2][2] == REQUEST  # the repeats really repeat
    assert recorder.seen[4 * 2][2] != REQUEST  # the same bytes after the table changed: not
