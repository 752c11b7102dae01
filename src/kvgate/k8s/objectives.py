"""InferenceObjective priorities watched from the Kubernetes API into an ObjectiveStore.

:class:`ObjectiveWatcher` is ``kvgate epp``'s counterpart of llm-d-router's
InferenceObjectiveReconciler (``pkg/epp/controller/inferenceobjective_reconciler.go``): the
store the request path reads (kvgate.flowcontrol.objectives) holds, by name, the priority of
every InferenceObjective in the pool's namespace whose ``spec.poolRef`` names the EPP's pool.

Rules, as llm-d-router applies them:

* Only the pool's namespace is listed and watched (llm-d's cache is scoped the same way).
* An objective counts when ``spec.poolRef.name`` is the pool's name and ``spec.poolRef.group``
  (the CRD's default ``inference.networking.k8s.io`` when unset) is the pool's group. One
  that stops matching (poolRef changed), is deleted, or carries a deletionTimestamp is
  removed: its requests fall back to priority 0. ``spec.priority`` unset means 0.
* API versions: ``llm-d.ai/v1alpha2`` (llm-d-router's current group) and
  ``inference.networking.x-k8s.io/v1alpha2`` (GIE's experimental group, where the CRD lived
  before it moved to llm-d). As llm-d-router does (``controller_config.go``), API discovery
  (``GET /apis/{group}/{version}``, readable without RBAC on the resource) decides whether a
  version is installed; each installed one is listed and watched, one that is not is logged
  once and looked for again every ``recheck_s``. A name present in several versions takes
  the first version's object. An installed version the EPP may not read (403: RBAC) keeps
  :meth:`ObjectiveWatcher.start` from finishing, and it fails naming the version.
* An objective kvgate cannot read (``spec.priority`` not an integer) is logged once per
  distinct mistake, naming the object and field, and left out of the store.

Objectives already in the store when the watcher is built (``--objectives FILE``) are the
base: a watched objective of the same name overrides one, and deleting it restores the
file's priority.

Each version runs one loop: list, then watch from the list's resourceVersion; a dropped
stream resumes from the last resourceVersion seen; 410 Gone re-lists, and the list replaces
that version's objectives in one step. Errors back off from 0.2 s to ``backoff_max_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.errors import KvgateError, Problem
from kvgate.flowcontrol.objectives import (
    API_VERSIONS,
    KIND,
    Objective,
    ObjectiveStore,
    parse_objective,
)
from kvgate.k8s.apiclient import NotFound, WatchExpired, connect, json_or_raise, watch_events
from kvgate.k8s.inferencepool import GROUP_V1

log = logging.getLogger("kvgate.k8s")

PLURAL = "inferenceobjectives"
#: Tried in this order; llm-d-router's group first.
DEFAULT_API_VERSIONS: tuple[str, ...] = (
    "llm-d.ai/v1alpha2",
    "inference.networking.x-k8s.io/v1alpha2",
)
#: ``spec.poolRef.group`` when unset (the CRD's kubebuilder default).
DEFAULT_POOL_REF_GROUP = GROUP_V1


@dataclass(slots=True)
class _Source:
    """One watched API version and what it currently contributes."""

    api_version: str
    objectives: dict[str, Objective] = field(default_factory=dict)  # name -> objective
    rv: str | None = None  # last resourceVersion seen; None: list next
    served: bool | None = None  # None until discovery said no or the first list answered
    last_error: str = ""  # why the last list/watch failed, for start()'s error

    @property
    def group(self) -> str:
        return self.api_version.split("/", 1)[0]

    @property
    def version(self) -> str:
        return self.api_version.split("/", 1)[1]


class ObjectiveWatcher:
    """Keep ``store`` equal to the pool's InferenceObjectives; see the module docstring."""

    def __init__(
        self,
        store: ObjectiveStore,
        *,
        pool_name: str,
        namespace: str,
        pool_group: str = GROUP_V1,
        api_versions: Sequence[str] = DEFAULT_API_VERSIONS,
        kubeconfig: str | None = None,
        watch_timeout_s: int = 300,
        backoff_max_s: float = 5.0,
        recheck_s: float = 60.0,
    ) -> None:
        unknown = [v for v in api_versions if v not in API_VERSIONS]
        if unknown or not api_versions:
            raise KvgateError(
                f"InferenceObjective api_versions: expected some of {list(API_VERSIONS)}, "
                f"got {list(api_versions)}"
            )
        self.store = store
        self.pool_name = pool_name
        self.namespace = namespace
        self.pool_group = pool_group
        self.kubeconfig = kubeconfig
        self.watch_timeout_s = watch_timeout_s
        self.backoff_max_s = backoff_max_s
        self.recheck_s = recheck_s
        self.sources = [_Source(v) for v in dict.fromkeys(api_versions)]
        # the file's objectives: what a name falls back to when no watched object has it
        self._base = {n: Objective(n, store.priority(n), pool_name) for n in store.names()}
        self._reported: dict[str, str] = {}  # object key -> the mistake last logged
        self._api: Any = None
        self._custom: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        # counters, for tests and logs
        self.lists = 0
        self.watches = 0
        self.expired = 0
        self.reconnects = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, wait_synced_s: float | None = 30.0) -> None:
        """Connect and start one loop per API version; waits (unless None) until every
        version has been listed or found not served."""
        from kubernetes.aio import client

        self._api = await connect(self.kubeconfig)
        self._custom = client.CustomObjectsApi(self._api)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(s), name=f"k8s-objectives-{s.group}") for s in self.sources
        ]
        if wait_synced_s is not None:
            try:
                await asyncio.wait_for(self.synced.wait(), wait_synced_s)
            except TimeoutError:
                await self.stop()
                stuck = [s for s in self.sources if s.served is None]
                raise KvgateError(
                    f"InferenceObjectives in namespace {self.namespace} not readable after "
                    f"{wait_synced_s:.0f}s: "
                    + "; ".join(f"{s.api_version}: {s.last_error or 'no answer'}" for s in stuck)
                    + "; check the EPP's RBAC (get/list/watch inferenceobjectives in API group "
                    + " and ".join(repr(s.group) for s in stuck)
                    + ")"
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

    # --- what an object means ------------------------------------------------------------

    def _read(self, source: _Source, obj: Mapping[str, Any]) -> Objective | None:
        """The objective ``obj`` gives this pool, or None (another pool, deleting, invalid)."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec")
        pool_ref = spec.get("poolRef") if isinstance(spec, Mapping) else None
        if not isinstance(pool_ref, Mapping) or pool_ref.get("name") != self.pool_name:
            return None
        if (pool_ref.get("group") or DEFAULT_POOL_REF_GROUP) != self.pool_group:
            return None
        if meta.get("deletionTimestamp"):
            return None
        name = str(meta.get("name", ""))
        where = f"{source.api_version} {KIND} {self.namespace}/{name}"
        # list items may omit apiVersion/kind; the collection they came from says which
        doc = {"apiVersion": source.api_version, "kind": KIND, **obj}
        problems: list[Problem] = []
        objective = parse_objective(doc, where, "", problems)
        key = f"{source.api_version}/{name}"
        if objective is None:
            text = "; ".join(str(dataclasses.replace(p, path=p.path.lstrip("."))) for p in problems)
            if self._reported.get(key) != text:
                self._reported[key] = text
                log.warning("ignoring an InferenceObjective: %s", text)
            return None
        self._reported.pop(key, None)
        return objective

    def _settle(self, names: Iterable[str]) -> None:
        """Put into the store, for each name, the first version's object, else the file's."""
        for name in names:
            for source in self.sources:
                objective = source.objectives.get(name)
                if objective is not None:
                    self.store.put(objective)
                    break
            else:
                base = self._base.get(name)
                if base is not None:
                    self.store.put(base)
                else:
                    self.store.remove(name)

    def _apply(self, source: _Source, etype: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        objective = None if etype == "DELETED" else self._read(source, obj)
        before = source.objectives.get(name)
        if objective is None:
            if before is None:
                return
            del source.objectives[name]
            log.info("InferenceObjective %s/%s: removed", self.namespace, name)
        else:
            if objective == before:
                return
            source.objectives[name] = objective
            log.info(
                "InferenceObjective %s/%s: priority %d", self.namespace, name, objective.priority
            )
        self._settle([name])

    # --- the loop ------------------------------------------------------------------------

    async def _installed(self, source: _Source) -> bool:
        """Whether API discovery lists InferenceObjective in ``source``'s group/version."""
        resp = await self._custom.get_api_resources_without_preload_content(
            source.group, source.version, _request_timeout=30.0
        )
        try:
            body = await json_or_raise(resp)
        except NotFound:
            return False
        return any(r.get("kind") == KIND for r in body.get("resources") or ())

    async def _list(self, source: _Source) -> None:
        resp = await self._custom.list_namespaced_custom_object_without_preload_content(
            source.group, source.version, self.namespace, PLURAL, _request_timeout=60.0
        )
        body = await json_or_raise(resp)
        self.lists += 1
        listed: dict[str, Objective] = {}
        for item in body.get("items") or ():
            objective = self._read(source, item)
            if objective is not None:
                listed[objective.name] = objective
        changed = set(source.objectives) | set(listed)
        source.objectives = listed
        self._settle(sorted(changed))
        source.rv = (body.get("metadata") or {}).get("resourceVersion")
        log.info(
            "InferenceObjectives (%s) for pool %s: %d at resourceVersion %s",
            source.api_version,
            self.pool_name,
            len(listed),
            source.rv,
        )

    def _mark_listed(self, source: _Source, served: bool) -> None:
        if source.served is not served:
            if not served:
                log.info(
                    "%s %s is not served by the API server (CRD not installed); checking "
                    "again every %.0fs",
                    source.api_version,
                    KIND,
                    self.recheck_s,
                )
            source.served = served
        if all(s.served is not None for s in self.sources):
            self.synced.set()

    async def _run(self, source: _Source) -> None:
        backoff = 0.2
        while True:
            try:
                if source.rv is None:
                    if not await self._installed(source):
                        raise NotFound(f"{source.api_version} {KIND}: not installed")
                    await self._list(source)
                    self._mark_listed(source, True)
                self.watches += 1
                resp = await self._custom.list_namespaced_custom_object_without_preload_content(
                    source.group,
                    source.version,
                    self.namespace,
                    PLURAL,
                    watch=True,
                    resource_version=source.rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=float(self.watch_timeout_s + 30),
                )
                async for etype, obj in watch_events(resp):
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if etype != "BOOKMARK":
                        self._apply(source, etype, obj)
                    if rv:
                        source.rv = rv
                backoff = 0.2  # a clean end (timeoutSeconds): resume at once
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                self.expired += 1
                log.info("InferenceObjective watch (%s) expired; re-listing", source.api_version)
                source.rv = None
            except NotFound:
                # the CRD is absent (or was removed since): nothing of this version counts
                self._drop(source)
                self._mark_listed(source, False)
                await asyncio.sleep(self.recheck_s)
            except Exception as exc:
                self.reconnects += 1
                source.last_error = str(exc) or type(exc).__name__
                log.warning(
                    "InferenceObjective watch (%s) broke (%s); resuming in %.1fs",
                    source.api_version,
                    exc or type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _drop(self, source: _Source) -> None:
        names = sorted(source.objectives)
        source.objectives = {}
        source.rv = None
        self._settle(names)
