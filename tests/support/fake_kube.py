"""A small stateful Kubernetes API server for discovery tests (no real one runs here).

It speaks the parts of the real API that kvgate's InferencePool discovery uses, with the
same JSON shapes, so the production client library (``kubernetes.aio``) drives it unchanged:

* ``GET /api/v1/namespaces/{ns}/pods?labelSelector=...`` -> ``PodList`` with
  ``metadata.resourceVersion``;
* the same with ``watch=true&resourceVersion=RV`` -> a chunked stream of
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`` lines. As the real
  watch cache does, an object that stops matching the selector arrives as ``DELETED`` and
  one that starts matching as ``ADDED``; a resourceVersion older than the compaction point
  gets an ``ERROR`` event with a 410 ``Expired`` Status;
* ``GET /apis/{group}/{version}/namespaces/{ns}/inferencepools/{name}`` and the list/watch
  of inferencepools;
* the list/watch of ``inferenceobjectives`` for each apiVersion in ``objective_api_versions``
  (both ``llm-d.ai/v1alpha2`` and ``inference.networking.x-k8s.io/v1alpha2`` by default; a
  version left out answers 404, as a cluster without that CRD does; one in
  ``forbidden_api_versions`` answers 403, as RBAC without that group does). Objectives are
  kept per API group, so the same name may exist in both;
* ``GET /apis/{group}/{version}`` -> the ``APIResourceList`` of API discovery (404 for a
  version that serves nothing here);
* ``coordination.k8s.io/v1`` Leases: GET, POST (409 AlreadyExists when it exists) and PUT
  (409 Conflict unless ``metadata.resourceVersion`` is the stored one), as leader election
  uses them; ``lease()`` reads one back for assertions.

Every mutation bumps one global resourceVersion, as etcd's revision does. Tests drive it
through methods (``add_pod``, ``set_ready``, ``set_labels``, ``terminate``, ``delete_pod``,
``add_objective``, ``update_objective``, ``delete_objective``, ``break_watches``, ``compact``) on the same event loop as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]

_PLURALS = {"pods": "Pod", "inferencepools": "InferencePool"}
_POOL_API_VERSIONS = ("inference.networking.k8s.io/v1", "inference.networking.x-k8s.io/v1alpha2")
OBJECTIVE_API_VERSIONS = ("llm-d.ai/v1alpha2", "inference.networking.x-k8s.io/v1alpha2")


def objective_kind(api_version: str) -> str:
    """The store's kind key for InferenceObjectives of ``api_version``'s group."""
    return f"InferenceObjective.{api_version.split('/')[0]}"


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: ``a=b,c==d,e!=f``, ``key``, ``!key``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class _Event:
    rv: int
    kind: str  # "Pod" / "InferencePool" / objective_kind(apiVersion)
    namespace: str
    type: str  # ADDED / MODIFIED / DELETED
    old: Obj | None
    new: Obj


@dataclass
class _Watcher:
    kind: str
    namespace: str
    selector: str
    name: str | None
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)


class FakeKube:
    """The fake API server; see the module docstring."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (kind, ns, name) -> object
        self.history: list[_Event] = []
        self.compacted_rv = 0
        self._watchers: list[_Watcher] = []
        self._responses: set[web.StreamResponse] = set()
        self.requests: list[str] = []  # "GET path?query" of every request, for assertions
        self.objective_api_versions: set[str] = set(OBJECTIVE_API_VERSIONS)
        self.forbidden_api_versions: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- server --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._list_or_watch)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_post(leases, self._create_lease)
        app.router.add_get(leases + "/{name}", self._get_lease)
        app.router.add_put(leases + "/{name}", self._replace_lease)
        app.router.add_get("/apis/{group}/{version}", self._resources)
        app.router.add_get("/apis/{group}/{version}/", self._resources)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._list_or_watch)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._get)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self.break_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server (token auth, as a ServiceAccount would)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "epp", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "epp", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # --- state changes (what a controller / kubelet would do) ----------------------------

    def _store(self, kind: str, obj: Obj, event_type: str | None = None) -> Obj:
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        old = self.objects.get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        etype = event_type or ("MODIFIED" if old is not None else "ADDED")
        if etype == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        event = _Event(
            self.rv, kind, meta["namespace"], etype, copy.deepcopy(old), copy.deepcopy(obj)
        )
        self.history.append(event)
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(event)
        return obj

    def add_pod(
        self,
        name: str,
        ip: str,
        labels: dict[str, str],
        *,
        namespace: str = "default",
        ready: bool = False,
    ) -> Obj:
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": dict(labels),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai:latest"}]},
            "status": {
                "phase": "Running" if ready else "Pending",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True" if ready else "False"},
                ],
            },
        }
        return self._store("Pod", pod)

    def pod(self, name: str, namespace: str = "default") -> Obj:
        return copy.deepcopy(self.objects[("Pod", namespace, name)])

    def set_ready(self, name: str, ready: bool, namespace: str = "default") -> Obj:
        pod = self.pod(name, namespace)
        pod["status"]["phase"] = "Running"
        for cond in pod["status"]["conditions"]:
            if cond["type"] == "Ready":
                cond["status"] = "True" if ready else "False"
        return self._store("Pod", pod)

    def set_labels(self, name: str, labels: dict[str, str], namespace: str = "default") -> Obj:
        pod = self.pod(name, namespace)
        pod["metadata"]["labels"] = dict(labels)
        return self._store("Pod", pod)

    def terminate(self, name: str, namespace: str = "default") -> Obj:
        """Graceful deletion: the pod stays, with a deletionTimestamp, until delete_pod."""
        pod = self.pod(name, namespace)
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z"
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        return self._store("Pod", pod)

    def delete_pod(self, name: str, namespace: str = "default") -> Obj:
        return self._store("Pod", self.pod(name, namespace), "DELETED")

    def add_pool(
        self,
        name: str,
        labels: dict[str, str],
        ports: list[int],
        *,
        namespace: str = "default",
        group: str = "inference.networking.k8s.io",
        epp_service: str = "epp",
        epp_port: int = 9002,
    ) -> Obj:
        if group == "inference.networking.k8s.io":
            spec: Obj = {
                "selector": {"matchLabels": dict(labels)},
                "targetPorts": [{"number": p} for p in ports],
                "endpointPickerRef": {
                    "group": "",
                    "kind": "Service",
                    "name": epp_service,
                    "port": {"number": epp_port},
                    "failureMode": "FailClose",
                },
            }
            version = "v1"
        else:
            spec = {
                "selector": dict(labels),
                "targetPortNumber": ports[0],
                "extensionRef": {
                    "group": "",
                    "kind": "Service",
                    "name": epp_service,
                    "portNumber": epp_port,
                    "failureMode": "FailClose",
                },
            }
            version = "v1alpha2"
        pool: Obj = {
            "apiVersion": f"{group}/{version}",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": spec,
        }
        return self._store("InferencePool", pool)

    def update_pool(self, name: str, namespace: str = "default", **spec: Any) -> Obj:
        pool = copy.deepcopy(self.objects[("InferencePool", namespace, name)])
        pool["spec"].update(spec)
        return self._store("InferencePool", pool)

    def add_objective(
        self,
        name: str,
        pool: str,
        priority: int | None = None,
        *,
        namespace: str = "default",
        api_version: str = "llm-d.ai/v1alpha2",
        pool_group: str | None = None,
    ) -> Obj:
        """An InferenceObjective; ``priority`` None leaves it unset, ``pool_group`` None
        leaves poolRef.group out (the CRD's default, inference.networking.k8s.io, applies)."""
        pool_ref: Obj = {"name": pool}
        if pool_group is not None:
            pool_ref["group"] = pool_group
        spec: Obj = {"poolRef": pool_ref}
        if priority is not None:
            spec["priority"] = priority
        objective: Obj = {
            "apiVersion": api_version,
            "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": spec,
        }
        return self._store(objective_kind(api_version), objective)

    def objective(
        self, name: str, namespace: str = "default", api_version: str = "llm-d.ai/v1alpha2"
    ) -> Obj:
        return copy.deepcopy(self.objects[(objective_kind(api_version), namespace, name)])

    def update_objective(
        self,
        name: str,
        namespace: str = "default",
        api_version: str = "llm-d.ai/v1alpha2",
        **spec: Any,
    ) -> Obj:
        objective = self.objective(name, namespace, api_version)
        objective["spec"].update(spec)
        return self._store(objective_kind(api_version), objective)

    def delete_objective(
        self, name: str, namespace: str = "default", api_version: str = "llm-d.ai/v1alpha2"
    ) -> Obj:
        objective = self.objective(name, namespace, api_version)
        return self._store(objective_kind(api_version), objective, "DELETED")

    def lease(self, name: str, namespace: str = "default") -> Obj | None:
        return self.objects.get(("Lease", namespace, name))

    async def _get_lease(self, request: web.Request) -> web.Response:
        self.requests.append(f"GET {request.path_qs}")
        obj = self.lease(request.match_info["name"], request.match_info["ns"])
        if obj is None:
            return _json_status(404, "NotFound", f'leases "{request.match_info["name"]}" not found')
        return web.json_response(obj)

    async def _create_lease(self, request: web.Request) -> web.Response:
        self.requests.append(f"POST {request.path_qs}")
        obj = await request.json()
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = request.match_info["ns"]
        if self.lease(meta.get("name", ""), meta["namespace"]) is not None:
            return _json_status(409, "AlreadyExists", f'leases "{meta.get("name")}" already exists')
        meta["uid"] = str(uuid.uuid4())
        return web.json_response(self._store("Lease", obj), status=201)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        self.requests.append(f"PUT {request.path_qs}")
        name, ns = request.match_info["name"], request.match_info["ns"]
        stored = self.lease(name, ns)
        if stored is None:
            return _json_status(404, "NotFound", f'leases "{name}" not found')
        obj = await request.json()
        meta = obj.setdefault("metadata", {})
        if meta.get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            return _json_status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the '
                "object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        meta.update(name=name, namespace=ns, uid=stored["metadata"]["uid"])
        return web.json_response(self._store("Lease", obj))

    def break_watches(self) -> int:
        """Cut every open watch stream (as an apiserver restart or a load balancer would)."""
        n = len(self._watchers)
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()
        return n

    def compact(self) -> None:
        """Forget history up to now: older resourceVersions now get 410 Gone."""
        self.compacted_rv = self.rv
        self.history.clear()

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # --- HTTP handlers -------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"})

    async def _resources(self, request: web.Request) -> web.Response:
        self.requests.append(f"GET {request.path_qs}")
        api_version = f"{request.match_info['group']}/{request.match_info['version']}"
        resources = []
        if api_version in self.objective_api_versions:
            resources.append(("inferenceobjectives", "InferenceObjective"))
        if api_version in _POOL_API_VERSIONS:
            resources.append(("inferencepools", "InferencePool"))
        if not resources:
            return web.Response(
                status=404,
                content_type="application/json",
                text=_status(404, "NotFound", "the server could not find the requested resource"),
            )
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": api_version,
                "resources": [
                    {
                        "name": plural,
                        "namespaced": True,
                        "kind": kind,
                        "verbs": ["get", "list", "watch"],
                    }
                    for plural, kind in resources
                ],
            }
        )

    def _kind(self, request: web.Request) -> str:
        plural = request.match_info.get("plural", "pods")
        if plural == "inferenceobjectives":
            api_version = f"{request.match_info['group']}/{request.match_info['version']}"
            if api_version in self.forbidden_api_versions:
                raise web.HTTPForbidden(
                    content_type="application/json",
                    text=_status(
                        403, "Forbidden", f"inferenceobjectives.{api_version} is forbidden"
                    ),
                )
            if api_version not in self.objective_api_versions:
                raise web.HTTPNotFound(
                    content_type="application/json",
                    text=_status(
                        404, "NotFound", "the server could not find the requested resource"
                    ),
                )
            return objective_kind(api_version)
        kind = _PLURALS.get(plural)
        if kind is None:
            raise web.HTTPNotFound(text=_status(404, "NotFound", f"unknown resource {plural}"))
        return kind

    def _matches(self, w: _Watcher, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if w.name is not None and obj["metadata"]["name"] != w.name:
            return False
        return selector_matches(w.selector, obj["metadata"].get("labels") or {})

    async def _get(self, request: web.Request) -> web.Response:
        self.requests.append(f"GET {request.path_qs}")
        kind = self._kind(request)
        key = (kind, request.match_info["ns"], request.match_info["name"])
        obj = self.objects.get(key)
        if obj is None:
            return web.Response(
                status=404,
                content_type="application/json",
                text=_status(404, "NotFound", f'{kind.lower()}s "{key[2]}" not found'),
            )
        return web.json_response(obj)

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"GET {request.path_qs}")
        kind = self._kind(request)
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        name = None
        field_selector = request.query.get("fieldSelector", "")
        if field_selector.startswith("metadata.name="):
            name = field_selector.split("=", 1)[1]
        watcher = _Watcher(kind, ns, selector, name)
        if request.query.get("watch") not in ("true", "1"):
            items = [
                o
                for (k, n, _), o in sorted(self.objects.items())
                if k == kind and n == ns and self._matches(watcher, o)
            ]
            return web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": f"{kind.split('.')[0]}List",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        return await self._watch(request, watcher)

    async def _watch(self, request: web.Request, w: _Watcher) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        timeout_s = float(request.query.get("timeoutSeconds", "0") or 0) or None
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        since = int(rv_text) if rv_text not in ("", "0") else None
        if since is not None and since < self.compacted_rv:
            await _write(
                resp,
                {
                    "type": "ERROR",
                    "object": _status_obj(
                        410, "Expired", f"too old resource version: {since} ({self.compacted_rv})"
                    ),
                },
            )
            await resp.write_eof()
            return resp
        backlog: list[tuple[str, Obj]] = []
        if since is None:  # "0"/unset: synthetic ADDED for the current state
            for (k, n, _), o in sorted(self.objects.items()):
                if k == w.kind and n == w.namespace and self._matches(w, o):
                    backlog.append(("ADDED", o))
        else:
            for ev in self.history:
                if ev.rv > since:
                    out = self._translate(w, ev)
                    if out is not None:
                        backlog.append(out)
        self._watchers.append(w)
        try:
            for etype, obj in backlog:
                await _write(resp, {"type": etype, "object": obj})
            deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
            while True:
                wait = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if wait is not None and wait <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    break
                if ev is None:  # break_watches(): drop the connection without a clean end
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                out = self._translate(w, ev)
                if out is not None:
                    await _write(resp, {"type": out[0], "object": out[1]})
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove(w)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    def _translate(self, w: _Watcher, ev: _Event) -> tuple[str, Obj] | None:
        """The event as this watcher sees it (selector transitions become ADDED/DELETED)."""
        if ev.kind != w.kind or ev.namespace != w.namespace:
            return None
        was = self._matches(w, ev.old)
        now = self._matches(w, ev.new)
        if ev.type == "DELETED":
            return ("DELETED", ev.new) if was or now else None
        if was and now:
            return ("MODIFIED", ev.new)
        if now:
            return ("ADDED", ev.new)
        if was:
            return ("DELETED", ev.new)
        return None


async def _write(resp: web.StreamResponse, event: Obj) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")


def _status_obj(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _json_status(code: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=code, content_type="application/json", text=_status(code, reason, message)
    )


def _status(code: int, reason: str, message: str) -> str:
    return json.dumps(_status_obj(code, reason, message))
