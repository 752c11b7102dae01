"""free_port: below the kernel's ephemeral range, distinct call after call, honouring avoid."""

from __future__ import annotations

import socket

from kvgate.engines.hosts import free_port


def _ephemeral_low() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    low = _ephemeral_low()
    if low > 2024:
        assert all(p < low for p in ports)


def test_a_port_in_use_or_avoided_is_skipped() -> None:
    first = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        ports = {free_port(avoid={first + k for k in range(300)}) for _ in range(20)}
    assert taken not in ports and not ports & {first + k for k in range(300)}
