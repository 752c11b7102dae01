"""A TCP listener whose connections know when each request's first bytes reached the host.

The latency model counts a request's TTFT from its arrival. A handler can only stamp the
moment it starts, which on a 2-core VM is 0.2–0.8 ms after the bytes arrived (waking the
process on the loopback, then aiohttp's parse and two loop iterations before a handler
runs), and in a burst the n-th request waits behind the n−1 before it: all of that was added
to every TTFT a client saw. Linux stamps each received segment (``SO_TIMESTAMPNS``) and hands
the stamp to ``recvmsg``; uvloop's transports read with ``read()`` and drop it. So this module
has its own small transport: it reads with ``recvmsg``, keeps the stamp of the first segment
of each request (:attr:`StampedTransport.rx_start`, the first read after a response was
written), and otherwise behaves as an asyncio transport for aiohttp's server protocol: write
buffering with flow control, pause/resume reading, close after the buffer drains, abort.
Where the kernel gives no stamp (another OS), the read time is used.

With ``head_timeout_s``, a request head must arrive whole (up to its blank line) within that
long of its first byte, and a new connection's first head within that long of the accept;
else the connection is aborted (a slowloris client, or one that connects and stays silent,
holds a descriptor that long at most). aiohttp's low-level server has no such bound; its
keep-alive timeout only starts once a response was sent. The body is the handler's to bound
(``kvgate.sim.state.read_json``).

Times are on ``time.monotonic()`` (the event loop's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["StampedServer", "StampedTransport", "start_server"]

log = logging.getLogger("kvgate.sim.wire")

#: Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS, the same number); Python does not export it.
SO_TIMESTAMPNS: int | None = getattr(
    socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None
)
_CMSG_SPACE = socket.CMSG_SPACE(16)
READ_SIZE = 256 * 1024
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
#: A stamp older than this is taken for a clock step, not a wait (the read time is used).
MAX_AGE_S = 60.0
_TIMESPEC = struct.Struct("qq")
#: An interim (1xx) answer's status line starts so.
INTERIM = b"HTTP/1.1 1"


def kernel_arrival(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The monotonic time a segment reached the host, from ``recvmsg``'s ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            age: float = time.time() - (sec + nsec * 1e-9)
            if 0.0 <= age < MAX_AGE_S:
                return time.monotonic() - age
    return None


class StampedTransport(asyncio.Transport):
    """An asyncio transport over a connected non-blocking socket that records arrival times."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.Protocol,
        on_lost: Callable[[StampedTransport], None] | None = None,
        head_deadline: float | None = None,
        head_timeout_s: float | None = None,
    ) -> None:
        extra: dict[str, Any] = {"socket": sock, "sslcontext": None}
        with contextlib.suppress(OSError):
            extra["peername"] = sock.getpeername()
            extra["sockname"] = sock.getsockname()
        super().__init__(extra)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._reading = False
        self._closing = False
        self._lost = False
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        # The next read starts a request: a new connection, or the last thing done was a write.
        self._fresh = True
        #: When the first bytes of the current request reached the host (monotonic), 0 before.
        self.rx_start = 0.0
        #: Whether rx_start is the kernel's stamp (else it is the time of the read).
        self.rx_stamped = False
        # A request head is being read (until its blank line, or until something was written:
        # the server answered it, even a head it could not parse); it must end by the deadline.
        self._head_timeout_s = head_timeout_s
        self.in_head = head_timeout_s is not None
        self.head_deadline = math.inf if head_deadline is None else head_deadline
        self._head_tail = b""

    def start(self) -> None:
        self._protocol.connection_made(self)
        if not self._closing:
            self.resume_reading()

    # --- reading -------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data, anc, _flags, _addr = self._sock.recvmsg(READ_SIZE, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        if not data:
            self.pause_reading()
            try:
                keep_open = self._protocol.eof_received()
            except Exception as exc:
                self._force_close(exc)
                return
            if not keep_open:
                self.close()
            return
        if self._fresh:
            self._fresh = False
            stamp = kernel_arrival(anc)
            self.rx_stamped = stamp is not None
            self.rx_start = time.monotonic() if stamp is None else stamp
            if self._head_timeout_s is not None and not self.in_head:
                self.in_head = True
                self.head_deadline = self.rx_start + self._head_timeout_s
        if self.in_head:
            self._scan_head(data)
        try:
            self._protocol.data_received(data)
        except Exception as exc:
            log.exception("protocol failed on received data")
            self._force_close(exc)

    def _scan_head(self, data: bytes) -> None:
        probe = self._head_tail + data if self._head_tail else data
        if b"\r\n\r\n" in probe or b"\n\n" in probe:
            self.in_head = False
            self._head_tail = b""
        else:
            self._head_tail = probe[-3:]

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._fresh and not bytes(data[:10]).startswith(INTERIM):
            # the answer begins (a 100 Continue is not one: the body still comes)
            self._fresh = True
            self.in_head = False
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._force_close(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer.extend(data)
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del self._buffer[:sent]
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._call_connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = min(self._high, self._high // 4 if low is None else low)

    def can_write_eof(self) -> bool:
        return False

    # --- closing -------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; the connection closes once what was written has been sent."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._loop.remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self.pause_reading()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            if self._on_lost is not None:
                self._on_lost(self)


class StampedServer:
    """Listening sockets that hand each accepted connection to a fresh protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.Protocol],
        socks: list[socket.socket],
        head_timeout_s: float | None = None,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._socks = socks
        self.transports: set[StampedTransport] = set()
        self.head_timeout_s = head_timeout_s
        #: Connections aborted because a request head did not arrive in time.
        self.head_timeouts = 0
        self._sweeper: asyncio.TimerHandle | None = None
        if head_timeout_s is not None:
            self._sweep_every_s = min(1.0, head_timeout_s / 4)
            self._sweeper = loop.call_later(self._sweep_every_s, self._sweep)
        self.stamped = SO_TIMESTAMPNS is not None
        for sock in socks:
            if self.stamped:
                # Set on the listener, accepted sockets inherit it, and the kernel's stamping
                # (switched on lazily, system-wide, while any socket asks for it) stays on:
                # else a connection's first segments could arrive before it is, unstamped.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # type: ignore[arg-type]
                except OSError:
                    self.stamped = False
            loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def port(self) -> int:
        return int(self._socks[0].getsockname()[1])

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(128):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, aborted handshakes: keep listening
                log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timeout = self.head_timeout_s
            transport = StampedTransport(
                self._loop,
                conn,
                self._factory(),
                on_lost=self.transports.discard,
                head_deadline=None if timeout is None else time.monotonic() + timeout,
                head_timeout_s=timeout,
            )
            self.transports.add(transport)
            transport.start()

    def _sweep(self) -> None:
        """Abort the connections whose request head is late (one pass over them a tick)."""
        now = time.monotonic()
        late = [t for t in self.transports if t.in_head and now >= t.head_deadline]
        for transport in late:
            self.head_timeouts += 1
            transport.abort()
        if late:
            log.info(
                "closed %d connection(s): no request head within %ss",
                len(late),
                self.head_timeout_s,
            )
        self._sweeper = self._loop.call_later(self._sweep_every_s, self._sweep)

    def close(self) -> None:
        """Stop accepting; open connections are left to their protocols."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for sock in self._socks:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()


async def start_server(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    backlog: int = 4096,
    head_timeout_s: float | None = None,
) -> StampedServer:
    """Listen on ``host:port`` (``0.0.0.0``/``::`` for all) and serve with ``protocol_factory``;
    with ``head_timeout_s``, connections whose request head is late are aborted."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    # Every address the host resolves to, as asyncio's create_server binds them.
    addrs = list(dict.fromkeys((family, addr) for family, _k, _p, _n, addr in infos))
    families = {family for family, _ in addrs}
    socks: list[socket.socket] = []
    try:
        for family, addr in addrs:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(families) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return StampedServer(loop, protocol_factory, socks, head_timeout_s)
