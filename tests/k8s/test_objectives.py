"""InferenceObjective priorities watched against a stateful fake API server, through
kubernetes.aio, into the ObjectiveStore the request path reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kvgate.errors import KvgateError
from kvgate.flowcontrol.objectives import Objective, ObjectiveStore
from kvgate.k8s.inferencepool import GROUP_V1, GROUP_V1ALPHA2
from kvgate.k8s.objectives import ObjectiveWatcher
from support.fake_kube import FakeKube

POOL = "qwen-pool"
NS = "llm"
GIE = "inference.networking.x-k8s.io/v1alpha2"


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
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
    kube: FakeKube,
    tmp_path: Path,
    store: ObjectiveStore | None = None,
    *,
    pool_group: str = GROUP_V1,
    recheck_s: float = 60.0,
) -> tuple[ObjectiveStore, ObjectiveWatcher]:
    store = store if store is not None else ObjectiveStore()
    watcher = ObjectiveWatcher(
        store,
        pool_name=POOL,
        namespace=NS,
        pool_group=pool_group,
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        watch_timeout_s=30,
        backoff_max_s=0.2,
        recheck_s=recheck_s,
    )
    await watcher.start(wait_synced_s=10)
    return store, watcher


async def test_add_modify_delete(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_objective("interactive", POOL, 10, namespace=NS)
    kube.add_objective("default-prio", POOL, None, namespace=NS)  # unset priority: 0
    store, watcher = await start_watcher(kube, tmp_path)
    try:
        assert store.priority("interactive") == 10
        assert store.names() == ["default-prio", "interactive"]
        assert store.priority("default-prio") == 0
        kube.add_objective("batch", POOL, -5, namespace=NS)
        await eventually(lambda: store.priority("batch") == -5, "batch added")
        kube.update_objective("interactive", namespace=NS, priority=20)
        await eventually(lambda: store.priority("interactive") == 20, "priority changed")
        kube.delete_objective("batch", namespace=NS)
        await eventually(lambda: "batch" not in store.names(), "batch deleted")
        assert store.priority("batch") == 0
        assert watcher.lists == 2  # one per served version; the rest came through the watch
    finally:
        await watcher.stop()


async def test_other_pools_namespaces_and_groups_are_ignored(
    kube: FakeKube, tmp_path: Path
) -> None:
    kube.add_objective("mine", POOL, 3, namespace=NS)
    kube.add_objective("other-pool", "llama-pool", 7, namespace=NS)
    kube.add_objective("other-ns", POOL, 7, namespace="elsewhere")
    # poolRef.group defaults to inference.networking.k8s.io: a v1alpha2 pool must be named
    kube.add_objective("alpha-pool", POOL, 7, namespace=NS, pool_group=GROUP_V1ALPHA2)
    store, watcher = await start_watcher(kube, tmp_path)
    try:
        assert store.names() == ["mine"]
        # an objective moved to another pool leaves; one moved onto ours arrives
        kube.update_objective("mine", namespace=NS, poolRef={"name": "llama-pool"})
        kube.update_objective("other-pool", namespace=NS, poolRef={"name": POOL})
        await eventually(lambda: store.names() == ["other-pool"], "poolRef moves")
        assert store.priority("other-pool") == 7
    finally:
        await watcher.stop()
    store2, watcher2 = await start_watcher(kube, tmp_path, pool_group=GROUP_V1ALPHA2)
    try:
        assert store2.names() == ["alpha-pool"]
    finally:
        await watcher2.stop()


async def test_watch_resumes_and_relists_after_expiry(kube: FakeKube, tmp_path: Path) -> None:
    kube.add_objective("a", POOL, 1, namespace=NS)
    store, watcher = await start_watcher(kube, tmp_path)
    try:
        await eventually(lambda: kube.open_watches >= 2, "both versions watched")
        kube.break_watches()
        kube.add_objective("b", POOL, 2, namespace=NS)  # while no watch is open
        await eventually(lambda: store.priority("b") == 2, "resumed from resourceVersion")
        assert watcher.lists == 2 and watcher.expired == 0

        await eventually(lambda: kube.open_watches >= 2, "watching again")
        kube.break_watches()
        kube.delete_objective("a", namespace=NS)
        kube.add_objective("c", POOL, 3, namespace=NS)
        kube.compact()  # the resourceVersions held are now too old: 410, then a fresh list
        await eventually(lambda: store.names() == ["b", "c"], "re-listed after 410")
        assert watcher.expired >= 1 and watcher.lists >= 3
    finally:
        await watcher.stop()


async def test_both_groups_the_first_wins_and_unserved_is_rechecked(
    kube: FakeKube, tmp_path: Path
) -> None:
    kube.objective_api_versions = {GIE}  # only GIE's experimental CRD is installed
    kube.add_objective("shared", POOL, 1, namespace=NS, api_version=GIE)
    store, watcher = await start_watcher(kube, tmp_path, recheck_s=0.05)
    try:
        assert store.priority("shared") == 1
        assert any(r.startswith("GET /apis/llm-d.ai/v1alpha2") for r in kube.requests)
        assert not any("/apis/llm-d.ai/v1alpha2/namespaces" in r for r in kube.requests)
        kube.objective_api_versions.add("llm-d.ai/v1alpha2")  # llm-d's CRD gets installed
        kube.add_objective("shared", POOL, 9, namespace=NS)
        await eventually(lambda: store.priority("shared") == 9, "llm-d.ai object wins")
        kube.delete_objective("shared", namespace=NS)
        await eventually(lambda: store.priority("shared") == 1, "falls back to GIE's object")
    finally:
        await watcher.stop()


async def test_file_objectives_are_the_base(kube: FakeKube, tmp_path: Path) -> None:
    base = ObjectiveStore([Objective("batch", -1, POOL), Objective("bulk", -2, POOL)])
    store, watcher = await start_watcher(kube, tmp_path, base)
    try:
        assert store.names() == ["batch", "bulk"]
        kube.add_objective("batch", POOL, 4, namespace=NS)
        await eventually(lambda: store.priority("batch") == 4, "watched object overrides")
        kube.delete_objective("batch", namespace=NS)
        await eventually(lambda: store.priority("batch") == -1, "file's priority restored")
        assert store.priority("bulk") == -2
    finally:
        await watcher.stop()


async def test_invalid_objective_is_logged_once_and_skipped(
    kube: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kube.add_objective("bad", POOL, 1, namespace=NS)
    store, watcher = await start_watcher(kube, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="kvgate.k8s"):
            kube.update_objective("bad", namespace=NS, priority="high")
            kube.update_objective("bad", namespace=NS, priority="high", extra=1)
            kube.add_objective("after", POOL, 2, namespace=NS)
            await eventually(lambda: store.priority("after") == 2, "later events still flow")
        assert "bad" not in store.names()
        warnings = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
        assert warnings == [
            "ignoring an InferenceObjective: llm-d.ai/v1alpha2 InferenceObjective llm/bad: "
            "spec.priority: expected an integer, got string 'high'"
        ], warnings
        kube.update_objective("bad", namespace=NS, priority=5)
        await eventually(lambda: store.priority("bad") == 5, "fixed objective counts again")
    finally:
        await watcher.stop()


async def test_unreadable_installed_version_fails_start_naming_it(
    kube: FakeKube, tmp_path: Path
) -> None:
    kube.forbidden_api_versions = {"llm-d.ai/v1alpha2"}  # installed, but RBAC lacks the group
    watcher = ObjectiveWatcher(
        ObjectiveStore(),
        pool_name=POOL,
        namespace=NS,
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        backoff_max_s=0.1,
    )
    with pytest.raises(KvgateError) as info:
        await watcher.start(wait_synced_s=1)
    message = str(info.value)
    assert message.startswith("InferenceObjectives in namespace llm not readable after 1s: ")
    assert "llm-d.ai/v1alpha2: Kubernetes API GET " in message and " 403 " in message
    assert message.endswith("(get/list/watch inferenceobjectives in API group 'llm-d.ai')")


async def test_unknown_api_version_is_refused() -> None:
    with pytest.raises(KvgateError, match="api_versions: expected some of"):
        ObjectiveWatcher(
            ObjectiveStore(), pool_name=POOL, namespace=NS, api_versions=["llm-d.ai/v1"]
        )
