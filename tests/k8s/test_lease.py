"""Leader election on a Lease against the stateful fake API server (real HTTP, the real
``kubernetes.aio`` client): one candidate leads, a released Lease is taken at once, an
abandoned one only once it has not changed for the lease duration, a leader whose Lease was
taken stops leading within its renew deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvgate.errors import KvgateError
from kvgate.k8s.apiclient import connect
from kvgate.k8s.lease import LeaderElector, lease_name
from support.fake_kube import FakeKube

NAME = lease_name("default", "pool")


def elector(client: Any, identity: str, on_lost: Any = None) -> LeaderElector:
    """Short timings: a 1 s lease, 0.6 s renew deadline, 0.1 s retry period."""
    return LeaderElector(
        client,
        namespace="default",
        name=NAME,
        identity=identity,
        lease_duration_s=1.0,
        renew_deadline_s=0.6,
        retry_period_s=0.1,
        on_lost=on_lost,
    )


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(kube: FakeKube, tmp_path: Path) -> AsyncIterator[Any]:
    api = await connect(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    yield api
    await api.close()


async def until(check: Any, timeout_s: float = 5.0) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout_s``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout_s, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def holder(kube: FakeKube) -> str:
    lease = kube.lease(NAME)
    assert lease is not None
    return str(lease["spec"]["holderIdentity"])


def test_lease_name_is_llm_d_routers() -> None:
    assert NAME == "epp-default-pool.llm-d.ai"


def test_timings_must_nest() -> None:
    with pytest.raises(KvgateError, match="retry period < renew deadline < lease duration"):
        LeaderElector(None, namespace="default", name=NAME, renew_deadline_s=20.0)


async def test_one_leads_and_a_released_lease_passes_at_once(kube: FakeKube, client: Any) -> None:
    a = elector(client, "a")
    b = elector(client, "b")
    await asyncio.gather(a.start(), b.start())
    try:
        await until(lambda: a.is_leader or b.is_leader)
        leader, other = (a, b) if a.is_leader else (b, a)
        await asyncio.sleep(0.3)  # several rounds: the other stays passive
        assert not other.is_leader and holder(kube) == leader.identity
        lease = kube.lease(NAME)
        assert lease is not None and lease["spec"]["leaseDurationSeconds"] == 1
        await leader.stop()  # releases: empty holder
        took = await until(lambda: other.is_leader)
        assert took < 0.5 and holder(kube) == other.identity
        lease = kube.lease(NAME)
        assert lease is not None and lease["spec"]["leaseTransitions"] == 0  # released first
    finally:
        await a.stop()
        await b.stop()


async def test_an_abandoned_lease_is_taken_after_the_lease_duration(
    kube: FakeKube, client: Any
) -> None:
    a = elector(client, "a")
    await a.start()
    await until(lambda: a.is_leader)
    b = elector(client, "b")
    await b.start()
    try:
        assert a._task is not None
        a._task.cancel()  # a crashed: no more renewals, no release
        took = await until(lambda: b.is_leader)
        assert 0.8 < took < 2.0, took
        lease = kube.lease(NAME)
        assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    finally:
        a.is_leader = False  # crashed: nothing to release
        await a.stop()
        await b.stop()


async def test_a_leader_whose_lease_was_taken_stops_leading(kube: FakeKube, client: Any) -> None:
    lost = asyncio.Event()
    a = elector(client, "a", lost.set)
    await a.start()
    try:
        await until(lambda: a.is_leader)
        lease = kube.lease(NAME)
        assert lease is not None
        lease["spec"]["holderIdentity"] = "intruder"  # written behind a's back
        kube._store("Lease", lease)
        await asyncio.wait_for(lost.wait(), 3)
        assert not a.is_leader
    finally:
        await a.stop()
    assert holder(kube) == "intruder"  # not a's to release
