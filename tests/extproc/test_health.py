"""gRPC health as llm-d-router's EPP answers it, on a real grpc.aio server with kvgate's
handler: every service name follows sync without leader election; with it, ``liveness``
stays SERVING on a standby while ``readiness``, ``""`` and ext_proc follow the Lease."""

from __future__ import annotations

import grpc
import pytest

from kvgate.extproc.health import (
    EXT_PROC,
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    health_handler,
)


async def check_all(ready: bool, leader_election: bool, services: list[str]) -> dict[str, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (health_handler(lambda: ready, leader_election=leader_election),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            out = {}
            for service in services:
                request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
                answer = bytes(await check(request, timeout=5))
                assert answer[0] == 0x08, answer
                out[service] = answer[1]
            return out
    finally:
        await server.stop(0)


SERVICES = ["", "liveness", "readiness", EXT_PROC, "inference-extension", "no-such-service"]


@pytest.mark.parametrize("ready", [True, False])
async def test_without_leader_election_every_name_follows_sync(ready: bool) -> None:
    answers = await check_all(ready, False, SERVICES)
    assert set(answers.values()) == {SERVING if ready else NOT_SERVING}


async def test_leader_election_leader_and_standby() -> None:
    leader = await check_all(True, True, SERVICES)
    standby = await check_all(False, True, SERVICES)
    assert leader == {**dict.fromkeys(SERVICES, SERVING), "no-such-service": SERVICE_UNKNOWN}
    assert standby == {
        **dict.fromkeys(SERVICES, NOT_SERVING),
        "liveness": SERVING,  # a standby is alive: the kubelet must not restart it
        "no-such-service": SERVICE_UNKNOWN,
    }
