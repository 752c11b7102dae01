"""free_port: below the kernel's ephemeral range, distinct call after call, honouring avoid."""

from __future__ import annotations

import socket

import pytest

from kvgate.engines import hosts
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


def test_a_port_in_use_or_avoided_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    span = hosts._listen_range()
    assert span is not None, "this machine's ephemeral range leaves no room below it"
    upcoming = span[0] + 100  # well inside the range: no wrap-around in this test
    monkeypatch.setattr(hosts, "_cursor", [upcoming])
    with socket.socket() as held:
        held.bind(("127.0.0.1", upcoming))  # the next port the cursor would give
        held.listen()
        assert free_port() == upcoming + 1
    assert free_port(avoid={upcoming + 2, upcoming + 3}) == upcoming + 4
