"""The HTTP/2 stream limit: ``SETTINGS_MAX_CONCURRENT_STREAMS`` advertised, and a stream over
it refused with ``RST_STREAM REFUSED_STREAM`` (RFC 9113 §5.1.2), with the ``h2`` library as
the client: on the codec, and on a running ``kvgate epp`` of either ``--grpc-server``.

A well-behaved client never opens more than the advertised number; an abusive one (or one
that opens streams before it has read the server's SETTINGS, which the RFC allows) is
answered per stream, and the connection and its other streams go on.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from extproc.epp_rig import open_epp
from kvgate.cli import build_parser
from kvgate.extproc import http2
from kvgate.extproc.h2server import PROCESS_PATH
from kvgate.extproc.http2 import ServerConnection

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"epp"),
    (b":path", PROCESS_PATH),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


class Opened:
    """The http2.Handler side: which streams reached the application."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.resets: list[int] = []

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.requests.append(stream_id)

    def on_data(self, stream_id: int, data: bytes) -> None:
        pass

    def on_end(self, stream_id: int) -> None:
        pass

    def on_reset(self, stream_id: int) -> None:
        self.resets.append(stream_id)

    def on_window(self) -> None:
        pass

    def on_goaway(self) -> None:
        pass


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    return client


def test_the_limit_is_advertised_and_one_stream_more_is_refused() -> None:
    opened = Opened()
    server = ServerConnection(opened, max_concurrent_streams=4)
    client = h2_client()
    # Five streams before the client has read the server's SETTINGS (RFC 9113 allows it; the
    # h2 client itself would refuse the fifth once it knows the limit).
    for stream_id in (1, 3, 5, 7, 9):
        client.send_headers(stream_id, REQUEST)
    server.receive(client.data_to_send())
    assert opened.requests == [1, 3, 5, 7]
    events = client.receive_data(server.data_to_send())
    changed = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    assert changed[0].changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 4
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(9, ErrorCodes.REFUSED_STREAM)]
    assert server.refused_streams == 1
    # The refused stream's DATA is dropped as on any closed stream; the connection goes on.
    client.send_data(1, b"\0\0\0\0\0")
    server.receive(client.data_to_send())
    # One stream ends: a new one fits again.
    server.send_headers(1, http2.literal_header(b":status", b"200"), end_stream=True)
    client.receive_data(server.data_to_send())
    client.send_headers(11, REQUEST)
    server.receive(client.data_to_send())
    assert opened.requests == [1, 3, 5, 7, 11]
    assert server.refused_streams == 1
    assert not server.goaway_sent


def test_the_default_limit_is_1024_and_bad_limits_are_refused() -> None:
    server = ServerConnection(Opened())
    assert server.max_concurrent_streams == http2.DEFAULT_MAX_CONCURRENT_STREAMS == 1024
    client = h2_client()
    client.receive_data(server.data_to_send())
    assert client.remote_settings.max_concurrent_streams == 1024
    with pytest.raises(ValueError, match="max_concurrent_streams: expected 1"):
        ServerConnection(Opened(), max_concurrent_streams=0)


def test_the_epp_flag() -> None:
    base = ["epp", "--endpoint", "127.0.0.1:8000"]
    assert build_parser().parse_args(base).max_concurrent_streams == 1024
    args = build_parser().parse_args([*base, "--max-concurrent-streams", "64"])
    assert args.max_concurrent_streams == 64
    for bad in ("0", "-3", "many", str(2**31)):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, "--max-concurrent-streams", bad])


async def _exchange(port: int, streams: int) -> tuple[int | None, list[tuple[int, int]]]:
    """Open ``streams`` ext_proc streams at once on one connection; the server's advertised
    limit and the streams it reset, once it has answered the last stream opened."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = h2_client()
    ids = [1 + 2 * i for i in range(streams)]
    for stream_id in ids:
        client.send_headers(stream_id, REQUEST)
    writer.write(client.data_to_send())
    limit: int | None = None
    resets: list[tuple[int, int]] = []
    try:
        async with asyncio.timeout(10):
            while not any(sid == ids[-1] for sid, _ in resets):
                data = await reader.read(65536)
                assert data, "the server closed the connection"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        setting = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                        if setting is not None:
                            limit = setting.new_value
                    elif isinstance(event, h2.events.StreamReset):
                        resets.append((event.stream_id, int(event.error_code)))
                writer.write(client.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()
    return limit, resets


@pytest.mark.parametrize(
    ("grpc_server", "code"),
    # gRPC's C core resets a stream over its limit with ENHANCE_YOUR_CALM, not REFUSED_STREAM
    [("h2", ErrorCodes.REFUSED_STREAM), ("grpcio", ErrorCodes.ENHANCE_YOUR_CALM)],
)
async def test_a_running_epp_refuses_streams_over_its_flag(grpc_server: str, code: int) -> None:
    async with open_epp(grpc_server, max_concurrent_streams=2) as epp:
        limit, resets = await _exchange(epp.server.opts.grpc_port, streams=3)
    assert limit == 2
    # the first two stay open (they wait for their messages); the third is refused
    assert resets == [(5, code)]
