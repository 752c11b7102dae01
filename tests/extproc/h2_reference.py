"""Drive kvgate's HTTP/2 server codec and the ``h2`` library's server with the same bytes.

Both are fed one byte stream, cut at the same places, and what each reports is reduced to
one comparable shape, :class:`Outcome`: the requests, body bytes, ends and resets in
order, then how the connection ended (an error code, or none). Only the server side is
compared, since that is all kvgate implements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.settings import SettingCodes

from kvgate.extproc import http2

#: Our settings for both servers: the frame size and windows the h2 server uses in
#: production are larger; these make windows and frame limits reachable in a test.
WINDOW_BYTES = 1 << 20
MAX_FRAME_BYTES = 16_384
MAX_HEADER_LIST_BYTES = 16 * 1024

Event = tuple[str, int, object]


@dataclass
class Outcome:
    """What a server made of a byte stream: events in order, and the error that ended it."""

    events: list[Event] = field(default_factory=list)
    error: int | None = None  # HTTP/2 error code of the GOAWAY, None if the stream was fine
    message: str = ""
    error_at: int | None = None  # index of the chunk that broke the connection

    def add(self, kind: str, stream_id: int, value: object = None) -> None:
        # DATA is compared as a byte stream per stream: frame boundaries are the sender's
        if kind == "data":
            if not value:
                return
            last = self.events[-1] if self.events else None
            if last is not None and last[0] == "data" and last[1] == stream_id:
                assert isinstance(last[2], bytes) and isinstance(value, bytes)
                self.events[-1] = ("data", stream_id, last[2] + value)
                return
        self.events.append((kind, stream_id, value))


class _OursHandler:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.outcome.add("request", stream_id, [(bytes(k), bytes(v)) for k, v in headers])

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.outcome.add("data", stream_id, bytes(data))

    def on_end(self, stream_id: int) -> None:
        self.outcome.add("end", stream_id)

    def on_reset(self, stream_id: int) -> None:
        self.outcome.add("reset", stream_id)

    def on_window(self) -> None:
        pass

    def on_goaway(self) -> None:
        self.outcome.add("goaway", 0)


def run_ours(chunks: Sequence[bytes]) -> tuple[Outcome, http2.ServerConnection]:
    """kvgate's codec; raises nothing but :class:`http2.Http2Error` (caught here)."""
    outcome = Outcome()
    conn = http2.ServerConnection(
        _OursHandler(outcome),
        window_bytes=WINDOW_BYTES,
        max_frame_bytes=MAX_FRAME_BYTES,
        max_header_list_bytes=MAX_HEADER_LIST_BYTES,
    )
    for i, chunk in enumerate(chunks):
        try:
            conn.receive(chunk)
        except http2.Http2Error as exc:
            outcome.error, outcome.message, outcome.error_at = exc.code, str(exc), i
            break
        conn.data_to_send()
    return outcome, conn


def run_h2(chunks: Sequence[bytes]) -> Outcome:
    """The ``h2`` library as a server with the same settings, headers passed through as is.

    Received DATA is acknowledged at once, as kvgate's codec does (its windows are topped
    up as frames arrive), so both enforce the same flow-control windows.
    """
    outcome = Outcome()
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_BYTES,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
        },
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW_BYTES - http2.DEFAULT_WINDOW)
    conn.data_to_send()
    for i, chunk in enumerate(chunks):
        try:
            events = conn.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            outcome.error, outcome.message, outcome.error_at = int(exc.error_code), repr(exc), i
            break
        for event in events:
            _add_h2_event(conn, outcome, event)
        conn.data_to_send()
    return outcome


def _add_h2_event(conn: h2.connection.H2Connection, outcome: Outcome, event: object) -> None:
    if isinstance(event, h2.events.RequestReceived):
        assert event.stream_id is not None and event.headers is not None
        headers = [(bytes(k), bytes(v)) for k, v in event.headers]
        outcome.add("request", event.stream_id, headers)
    elif isinstance(event, h2.events.DataReceived):
        assert event.stream_id is not None and event.data is not None
        outcome.add("data", event.stream_id, bytes(event.data))
        if event.flow_controlled_length:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    elif isinstance(event, h2.events.StreamEnded):
        assert event.stream_id is not None
        outcome.add("end", event.stream_id)
    elif isinstance(event, h2.events.StreamReset):
        assert event.stream_id is not None
        if event.remote_reset:
            outcome.add("reset", event.stream_id)
        else:  # h2 reset the stream itself (a stream error): kvgate reports no such event
            outcome.add("local-reset", event.stream_id, int(event.error_code or 0))
    elif isinstance(event, h2.events.ConnectionTerminated):
        outcome.add("goaway", 0)
