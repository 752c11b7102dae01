"""InferencePool discovery against a stateful fake API server, through kubernetes.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kvgate.endpoints.pool import EndpointPool
from kvgate.k8s.discovery import PoolWatcher
from kvgate.k8s.inferencepool import GROUP_V1, GROUP_V1ALPHA2
from support.fake_kube import FakeKube

LABELS = {"app": "qwen", "llm-d.ai/role": "decode"}


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


async def start_watcher(
    kube: FakeKube, tmp_path: Path, group: str = GROUP_V1
) -> tuple[EndpointPool, PoolWatcher]:
    pool = EndpointPool()
    watcher = PoolWatcher(
        pool,
        name="qwen-pool",
        namespace="llm",
        group=group,
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        watch_timeout_s=30,
        backoff_max_s=0.2,
    )
    await watcher.start(wait_synced_s=10)
    return pool, watcher


def names(pool: EndpointPool) -> set[str]:
    return {e.name for e in pool.all()}


async def test_pods_appear_turn_ready_terminate_and_leave(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_pool("qwen-pool", LABELS, [8000, 8001], namespace="llm")
    kube.add_pod("qwen-a", "10.0.0.1", LABELS, namespace="llm", ready=True)
    kube.add_pod("qwen-b", "10.0.0.2", LABELS, namespace="llm", ready=False)
    kube.add_pod("other", "10.0.0.9", {"app": "other"}, namespace="llm", ready=True)
    pool, watcher = await start_watcher(kube, tmp_path)
    try:
        # one endpoint per target port, named <ns>/<pod>-rank-<i>, only for the ready pod
        assert names(pool) == {"llm/qwen-a-rank-0", "llm/qwen-a-rank-1"}
        rank1 = pool.get("llm/qwen-a-rank-1")
        assert rank1 is not None and (rank1.address, rank1.port) == ("10.0.0.1", 8001)
        assert rank1.labels["llm-d.ai/role"] == "decode"
        # the list was a real label-selector list through the client library
        assert any("labelSelector=" in r and "watch" not in r for r in kube.requests)

        kube.set_ready("qwen-b", True, namespace="llm")
        await eventually(lambda: "llm/qwen-b-rank-0" in names(pool), "qwen-b turns ready")
        assert len(pool) == 4

        kube.add_pod("qwen-c", "10.0.0.3", LABELS, namespace="llm", ready=True)
        await eventually(lambda: "llm/qwen-c-rank-1" in names(pool), "qwen-c appears")

        kube.terminate("qwen-a", namespace="llm")  # deletionTimestamp set: out at once
        await eventually(lambda: "llm/qwen-a-rank-0" not in names(pool), "qwen-a terminating")
        kube.delete_pod("qwen-a", namespace="llm")
        kube.set_ready("qwen-c", False, namespace="llm")
        await eventually(
            lambda: names(pool) == {"llm/qwen-b-rank-0", "llm/qwen-b-rank-1"}, "qwen-c unready"
        )
        assert watcher.lists == 1  # all of that came through one watch, no re-list
    finally:
        await watcher.stop()


async def test_relabelled_pod_leaves_and_returns(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_pool("qwen-pool", LABELS, [8000], namespace="llm")
    kube.add_pod("qwen-a", "10.0.0.1", LABELS, namespace="llm", ready=True)
    kube.add_pod("qwen-b", "10.0.0.2", LABELS, namespace="llm", ready=True)
    pool, watcher = await start_watcher(kube, tmp_path)
    try:
        kube.set_labels("qwen-b", {"app": "qwen", "llm-d.ai/role": "prefill"}, namespace="llm")
        await eventually(lambda: names(pool) == {"llm/qwen-a-rank-0"}, "relabelled pod leaves")
        kube.set_labels("qwen-b", LABELS, namespace="llm")
        await eventually(lambda: "llm/qwen-b-rank-0" in names(pool), "relabelled back")
    finally:
        await watcher.stop()


async def test_broken_watch_resumes_from_resource_version(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_pool("qwen-pool", LABELS, [8000], namespace="llm")
    kube.add_pod("qwen-a", "10.0.0.1", LABELS, namespace="llm", ready=True)
    pool, watcher = await start_watcher(kube, tmp_path)
    try:
        await eventually(lambda: kube.open_watches >= 2, "pod and pool watches open")
        rv_before = watcher.pods_rv
        assert kube.break_watches() >= 1
        # changes while no watch is open must still arrive, from the saved resourceVersion
        kube.add_pod("qwen-b", "10.0.0.2", LABELS, namespace="llm", ready=True)
        kube.delete_pod("qwen-a", namespace="llm")
        await eventually(
            lambda: names(pool) == {"llm/qwen-b-rank-0"}, "events missed during the break"
        )
        assert watcher.lists == 1, "resumed by watching, not by listing again"
        resumed = [
            r for r in kube.requests if "watch=true" in r and f"resourceVersion={rv_before}" in r
        ]
        assert resumed, kube.requests
    finally:
        await watcher.stop()


async def test_gone_410_relists(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_pool("qwen-pool", LABELS, [8000], namespace="llm")
    kube.add_pod("qwen-a", "10.0.0.1", LABELS, namespace="llm", ready=True)
    pool, watcher = await start_watcher(kube, tmp_path)
    try:
        await eventually(lambda: kube.open_watches >= 2, "watches open")
        kube.break_watches()
        kube.add_pod("qwen-b", "10.0.0.2", LABELS, namespace="llm", ready=True)
        kube.compact()  # the resourceVersion the client holds is now too old
        await eventually(lambda: watcher.expired >= 1, "410 seen")
        await eventually(
            lambda: names(pool) == {"llm/qwen-a-rank-0", "llm/qwen-b-rank-0"}, "relisted"
        )
        assert watcher.lists == 2
    finally:
        await watcher.stop()


async def test_v1alpha2_pool_and_selector_change(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_pool("qwen-pool", {"app": "qwen"}, [8000], namespace="llm", group=GROUP_V1ALPHA2)
    kube.add_pod("qwen-a", "10.0.0.1", {"app": "qwen"}, namespace="llm", ready=True)
    kube.add_pod("llama-a", "10.0.0.5", {"app": "llama"}, namespace="llm", ready=True)
    pool, watcher = await start_watcher(kube, tmp_path, group=GROUP_V1ALPHA2)
    try:
        assert names(pool) == {"llm/qwen-a-rank-0"}
        assert any("/apis/inference.networking.x-k8s.io/v1alpha2/" in r for r in kube.requests)
        kube.update_pool(
            "qwen-pool", namespace="llm", selector={"app": "llama"}, targetPortNumber=9000
        )
        await eventually(lambda: names(pool) == {"llm/llama-a-rank-0"}, "pool selector changed")
        llama = pool.get("llm/llama-a-rank-0")
        assert llama is not None and llama.port == 9000
    finally:
        await watcher.stop()


async def test_missing_pool_is_a_clear_error(kube: FakeKube, tmp_path: Path) -> None:
    pool = EndpointPool()
    watcher = PoolWatcher(
        pool,
        name="nope",
        namespace="llm",
        group=GROUP_V1,
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        backoff_max_s=0.1,
    )
    from kvgate.errors import KvgateError

    with pytest.raises(KvgateError, match="InferencePool llm/nope"):
        await watcher.start(wait_synced_s=0.5)
