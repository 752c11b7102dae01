"""Endpoint discovery from a Kubernetes InferencePool: list + watch, resumable.

:class:`PoolWatcher` keeps an :class:`~kvgate.endpoints.pool.EndpointPool` equal to the
endpoints of the pool's Ready pods (see kvgate.k8s.inferencepool), using the official client
library's asyncio flavour (``kubernetes.aio``; docs/kubernetes.md has the measurements that
chose it). Two loops run:

* **pods**: list with the pool's label selector, then watch from the list's
  resourceVersion. A dropped stream resumes from the last resourceVersion seen (so no event
  is lost or replayed); ``410 Gone`` (history compacted) triggers a fresh list, which
  replaces the pool's contents in one step. Connection errors back off from 0.2 s to 5 s.
* **pool**: watch the InferencePool object itself; a changed selector or port list
  re-lists the pods.

The connection and the reading of list/watch answers are shared with the InferenceObjective
watcher (kvgate.k8s.apiclient).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.errors import KvgateError
from kvgate.k8s.apiclient import WatchExpired, connect, json_or_raise, watch_events
from kvgate.k8s.inferencepool import (
    PLURAL,
    PoolSpec,
    endpoints_of_pod,
    parse_pool,
    version_for_group,
)

log = logging.getLogger("kvgate.k8s")

__all__ = ["PoolWatcher", "WatchExpired"]


class PoolWatcher:
    """Mirror an InferencePool's Ready pods into an EndpointPool; see the module docstring."""

    def __init__(
        self,
        pool: EndpointPool,
        *,
        name: str,
        namespace: str,
        group: str,
        kubeconfig: str | None = None,
        scheme: str = "http",
        watch_timeout_s: int = 300,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.name = name
        self.namespace = namespace
        self.group = group
        self.version = version_for_group(group)
        self.kubeconfig = kubeconfig
        self.scheme = scheme
        self.watch_timeout_s = watch_timeout_s
        self.backoff_max_s = backoff_max_s
        self.spec: PoolSpec | None = None
        self.pods_rv: str | None = None
        self._pod_endpoints: dict[str, list[str]] = {}  # pod name -> endpoint names
        self._api: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        # counters, for tests and logs
        self.lists = 0
        self.watches = 0
        self.expired = 0
        self.reconnects = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, wait_synced_s: float | None = 30.0) -> None:
        """Connect, then start the loops; waits for the first pod list unless None."""
        from kubernetes.aio import client

        self._api = await connect(self.kubeconfig)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_pods(), name="k8s-pods"),
            loop.create_task(self._run_pool(), name="k8s-pool"),
        ]
        if wait_synced_s is not None:
            try:
                await asyncio.wait_for(self.synced.wait(), wait_synced_s)
            except TimeoutError:
                await self.stop()
                raise KvgateError(
                    f"InferencePool {self.namespace}/{self.name} ({self.group}/{self.version}) "
                    f"not readable after {wait_synced_s:.0f}s; check the name, namespace, "
                    "group and the EPP's RBAC (get/list/watch pods and inferencepools)"
                ) from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._api is not None:
            await self._api.close()
            self._api = None

    # --- the pool object -----------------------------------------------------------------

    async def _get_pool(self) -> PoolSpec:
        resp = await self._custom.get_namespaced_custom_object_without_preload_content(
            self.group, self.version, self.namespace, PLURAL, self.name, _request_timeout=30.0
        )
        obj = await json_or_raise(resp)
        return parse_pool(obj)

    async def _run_pool(self) -> None:
        """Watch the InferencePool; a changed selector or port list re-lists the pods."""
        backoff = 0.2
        rv: str | None = None
        while True:
            try:
                if self.spec is None:
                    await self.synced.wait()
                resp = await self._custom.list_namespaced_custom_object_without_preload_content(
                    self.group,
                    self.version,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    watch=True,
                    resource_version=rv,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=float(self.watch_timeout_s + 30),
                )
                async for etype, obj in watch_events(resp):
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if etype in ("ADDED", "MODIFIED"):
                        spec = parse_pool(obj)
                        if spec != self.spec:
                            log.info("InferencePool %s changed; re-listing pods", self.name)
                            self.spec = spec
                            await self._relist()
                    elif etype == "DELETED":
                        log.warning("InferencePool %s was deleted; keeping endpoints", self.name)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                rv = None
            except Exception as exc:
                log.warning("InferencePool watch failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    # --- pods ----------------------------------------------------------------------------

    async def _relist(self) -> None:
        """List the pods and make the pool exactly their endpoints."""
        assert self.spec is not None
        resp = await self._core.list_namespaced_pod_without_preload_content(
            self.namespace, label_selector=self.spec.label_selector, _request_timeout=60.0
        )
        body = await json_or_raise(resp)
        self.lists += 1
        specs: list[EndpointSpec] = []
        self._pod_endpoints.clear()
        for pod in body.get("items") or ():
            mine = endpoints_of_pod(self.spec, pod, self.scheme)
            if mine:
                self._pod_endpoints[pod["metadata"]["name"]] = [s.name for s in mine]
                specs.extend(mine)
        self.pool.set_endpoints(specs)
        self.pods_rv = (body.get("metadata") or {}).get("resourceVersion")
        log.info(
            "InferencePool %s: %d endpoint(s) from %d ready pod(s) at resourceVersion %s",
            self.name,
            len(specs),
            len(self._pod_endpoints),
            self.pods_rv,
        )

    def _apply(self, etype: str, pod: Mapping[str, Any]) -> None:
        assert self.spec is not None
        name = str(pod["metadata"]["name"])
        wanted = [] if etype == "DELETED" else endpoints_of_pod(self.spec, pod, self.scheme)
        before = self._pod_endpoints.get(name, [])
        keep = {s.name for s in wanted}
        stale = [n for n in before if n not in keep]
        if stale:
            self.pool.remove(stale)
        for spec in wanted:
            self.pool.upsert(spec)
        if wanted:
            self._pod_endpoints[name] = [s.name for s in wanted]
        else:
            self._pod_endpoints.pop(name, None)
        if stale or (wanted and not before):
            log.info("pod %s: %s", name, "in the pool" if wanted else "left the pool")

    async def _run_pods(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self.spec is None:
                    self.spec = await self._get_pool()
                if self.pods_rv is None:
                    await self._relist()
                    self.synced.set()
                self.watches += 1
                resp = await self._core.list_namespaced_pod_without_preload_content(
                    self.namespace,
                    label_selector=self.spec.label_selector,
                    watch=True,
                    resource_version=self.pods_rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=float(self.watch_timeout_s + 30),
                )
                async for etype, obj in watch_events(resp):
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if etype != "BOOKMARK":
                        self._apply(etype, obj)
                    if rv:
                        self.pods_rv = rv
                backoff = 0.2  # a clean end (timeoutSeconds): resume at once
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                self.expired += 1
                log.info("pod watch expired (410 Gone); re-listing")
                self.pods_rv = None
            except Exception as exc:
                self.reconnects += 1
                log.warning(
                    "pod watch broke (%s); resuming in %.1fs", exc or type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
