"""Two real ``kvgate epp --ha-enable-leader-election`` processes against the fake Kubernetes
API: one holds the Lease and reports SERVING on gRPC health, the other NOT_SERVING while its
pool stays in sync; killed without a release, the leader is replaced within the lease
duration. Short timings through kvgate's --leader-election-* flags (GIE has none)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession

from kvgate.k8s.lease import lease_name
from support.fake_kube import FakeKube
from support.metrics_server import start_metrics_server
from support.procs import Proc, free_port, kvgate_cmd

METRICS = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()
LABELS = {"app": "model"}
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


class Replica:
    def __init__(self, tmp: Path, name: str, kubeconfig: Path) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        self.proc = Proc(
            kvgate_cmd(
                "epp", "--host", "127.0.0.1", "--grpc-port", str(free_port()),
                "--grpc-health-port", str(self.health_port),
                "--metrics-port", str(self.metrics_port), "--secure-serving=false",
                "--pool-name", "pool", "--pool-namespace", "default",
                "--kubeconfig", str(kubeconfig), "--no-request-log",
                "--ha-enable-leader-election",
                "--leader-election-lease-duration", "2s",
                "--leader-election-renew-deadline", "1500ms",
                "--leader-election-retry-period", "200ms",
            ),
            tmp / f"{name}.log",
        )  # fmt: skip
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}")
        self.check = self.channel.unary_unary("/grpc.health.v1.Health/Check")

    async def health(self, service: str = "") -> bytes | None:
        """The Check answer, None while the port is not up yet."""
        assert self.proc.alive(), self.proc.log()[-3000:]
        request = bytes([0x0A, len(service)]) + service.encode() if service else b""
        try:
            return bytes(await self.check(request, timeout=1))
        except grpc.aio.AioRpcError:
            return None

    async def ready_pods(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with ClientSession() as s, s.get(url) as r:
            text = await r.text()
        found = re.search(r'^inference_pool_ready_pods\{name="pool"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else -1.0

    async def close(self) -> None:
        await self.channel.close()
        await asyncio.to_thread(self.proc.stop)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < timeout_s, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def test_one_epp_leads_and_the_other_takes_over(kube: FakeKube, tmp_path: Path) -> None:
    port = free_port()
    runner, _ = await start_metrics_server("127.0.0.1", port, page=METRICS)
    kube.add_pool("pool", LABELS, [port])
    kube.add_pod("model-a", "127.0.0.1", LABELS, ready=True)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    a = Replica(tmp_path, "epp-a", kubeconfig)
    b = Replica(tmp_path, "epp-b", kubeconfig)
    try:

        async def one_leads() -> bool:
            answers = {await a.health(), await b.health()}
            return answers == {SERVING, NOT_SERVING}

        # start-up imports are slow on a busy 2-core machine
        await until(one_leads, "one SERVING, one NOT_SERVING", timeout_s=90)
        leader, standby = (a, b) if await a.health() == SERVING else (b, a)
        lease = kube.lease(lease_name("default", "pool"))
        assert lease is not None
        holder = lease["spec"]["holderIdentity"]
        assert holder.startswith(socket.gethostname() + "_"), holder
        assert lease["spec"]["leaseDurationSeconds"] == 2
        # GIE's services: the whole server and ext_proc follow the lease, liveness does not
        ext_proc = "envoy.service.ext_proc.v3.ExternalProcessor"
        assert await standby.health(ext_proc) == NOT_SERVING
        assert await leader.health(ext_proc) == SERVING
        # the standby keeps its pool in sync (it routes what reaches it)
        await until(lambda: _is(standby.ready_pods(), 1.0), "standby's pool synced", 10)
        await until(lambda: _is(leader.ready_pods(), 1.0), "leader's pool synced", 10)

        await asyncio.to_thread(leader.proc.kill)  # no release: the lease must expire
        took = await until(
            lambda: _is(standby.health(), SERVING), "the standby takes over", timeout_s=8
        )
        assert took < 2.0 + 2.0, took  # the lease duration, plus a retry and a busy machine
        lease = kube.lease(lease_name("default", "pool"))
        assert lease is not None and lease["spec"]["holderIdentity"] != holder
        assert lease["spec"]["leaseTransitions"] == 1
    finally:
        await a.close()
        await b.close()
        await runner.cleanup()


async def _is(value: Awaitable[object], expected: object) -> bool:
    return (await value) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--endpoint", "127.0.0.1:1", "--ha-enable-leader-election"],
            "kvgate epp: --ha-enable-leader-election: needs --pool-name",
        ),
        (
            ["--endpoint", "127.0.0.1:1", "--leader-election-lease-duration", "5s"],
            "kvgate epp: --leader-election-lease-duration: needs --ha-enable-leader-election",
        ),
    ],
)
def test_leader_election_flags_that_cannot_act_stop_start_up(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "epp", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1]
