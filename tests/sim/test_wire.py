"""The simulator's transport: requests carry the time their bytes reached the host, even when
the process reads them late, and writes keep asyncio's flow control and close semantics."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from kvgate.sim import wire


class Recorder(asyncio.Protocol):
    """Records each read with the transport's request stamp and the time it was handled."""

    def __init__(self) -> None:
        self.transport: wire.StampedTransport | None = None
        self.reads: asyncio.Queue[tuple[bytes, float, float]] = asyncio.Queue()
        self.paused = 0
        self.resumed = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, wire.StampedTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.reads.put_nowait((data, self.transport.rx_start, time.monotonic()))

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def busy(seconds: float) -> None:
    """Keep the event loop from running, as a process busy with other requests would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def serve(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[wire.StampedServer, list[Recorder]]:
    protocols: list[Recorder] = []

    def factory() -> Recorder:
        protocols.append(Recorder())
        return protocols[-1]

    return await wire.start_server(factory, host, port), protocols


async def read_to_eof(client: socket.socket) -> bytes:
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(20):
        while chunk := await loop.sock_recv(client, 1 << 16):
            received += chunk
    return bytes(received)


async def connect(server: wire.StampedServer, protocols: list[Recorder]) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", server.port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async with asyncio.timeout(5):
        while not protocols:
            await asyncio.sleep(0)  # the accept runs on the loop
    return client


@pytest.mark.skipif(wire.SO_TIMESTAMPNS is None, reason="no kernel receive stamps here")
async def test_a_request_is_stamped_when_its_bytes_arrived_not_when_read() -> None:
    server, protocols = await serve()
    client = await connect(server, protocols)
    try:
        proto = protocols[0]
        assert proto.transport is not None
        # Linux switches receive stamping on a moment after the first socket asks for it
        # (the listener, just now); until then segments arrive unstamped.
        async with asyncio.timeout(5):
            while not proto.transport.rx_stamped:
                client.sendall(b"x")
                await proto.reads.get()
                proto.transport.write(b"y")  # a new request starts with the next read
                client.recv(1)
        sent = time.monotonic()
        client.sendall(b"POST / HTTP/1.1\r\n")
        busy(0.05)  # the process reads it 50 ms late
        data, stamp, handled = await asyncio.wait_for(proto.reads.get(), 5)
        assert data.startswith(b"POST")
        assert handled - sent >= 0.05
        assert sent - 0.001 <= stamp < sent + 0.025  # the kernel's time, not the read's
        # The rest of the same request, read later, keeps the request's first stamp.
        client.sendall(b"Content-Length: 0\r\n\r\n")
        _, again, _ = await asyncio.wait_for(proto.reads.get(), 5)
        assert again == stamp
        # After a response was written, the next bytes start a new request: a new stamp.
        proto.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 204")
        second = time.monotonic()
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        busy(0.02)
        _, stamp2, _ = await asyncio.wait_for(proto.reads.get(), 5)
        assert second - 0.001 <= stamp2 < second + 0.015
        assert proto.transport.rx_stamped
    finally:
        client.close()
        server.close()


async def test_writes_past_the_high_water_mark_pause_the_protocol_and_all_arrive() -> None:
    server, protocols = await serve()
    client = await connect(server, protocols)
    try:
        proto = protocols[0]
        assert proto.transport is not None
        payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the socket buffers hold
        proto.transport.write(payload)
        assert proto.paused == 1 and proto.transport.get_write_buffer_size() > 0
        proto.transport.close()  # closes only once everything was sent
        assert await read_to_eof(client) == payload
        assert proto.resumed == 1
        assert await asyncio.wait_for(proto.lost, 5) is None
    finally:
        client.close()
        server.close()


async def test_abort_drops_unsent_data_and_closes_at_once() -> None:
    server, protocols = await serve()
    client = await connect(server, protocols)
    try:
        proto = protocols[0]
        assert proto.transport is not None
        proto.transport.write(b"x" * (8 << 20))
        proto.transport.abort()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.transport.is_closing()
        proto.transport.write(b"ignored once closing")
        assert len(await read_to_eof(client)) < 8 << 20
    finally:
        client.close()
        server.close()


async def test_the_client_closing_ends_the_connection() -> None:
    server, protocols = await serve()
    client = await connect(server, protocols)
    try:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        client.close()
        assert await asyncio.wait_for(protocols[0].lost, 5) is None
        assert not server.transports
    finally:
        server.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_all_addresses_are_served_over_ipv4_and_ipv6() -> None:
    with socket.socket() as probe:  # a port free on 127.0.0.1 (and, in practice, on ::1)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # "" = every address, as asyncio's create_server takes it: 0.0.0.0 and :: where both exist.
    server, protocols = await serve("", port)
    targets = [(socket.AF_INET, ("127.0.0.1", port))]
    if _ipv6_loopback():
        targets.append((socket.AF_INET6, ("::1", port)))
    clients: list[socket.socket] = []
    try:
        for family, addr in targets:
            client = socket.socket(family, socket.SOCK_STREAM)
            clients.append(client)
            client.connect(addr)
        async with asyncio.timeout(5):
            while len(protocols) < len(targets):
                await asyncio.sleep(0)
        assert len(server.transports) == len(targets)
    finally:
        for client in clients:
            client.close()
        server.close()
