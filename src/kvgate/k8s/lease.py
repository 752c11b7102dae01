"""Active-passive leader election on a ``coordination.k8s.io/v1`` Lease, as the EPP's
controller-runtime manager does it (``--ha-enable-leader-election``).

The rules are client-go's ``leaderelection`` package's, which controller-runtime runs:

* the Lease is ``epp-<namespace>-<pool>.llm-d.ai`` in the pool's namespace (llm-d-router's
  ``LeaderElectionID``); the holder identity is ``<hostname>_<uuid>`` (controller-runtime's:
  the hostname is the pod name, the uuid keeps two processes on one host apart);
* a candidate takes the Lease when it has no holder, or when the record it last saw has not
  changed for ``lease_duration_s`` by the candidate's own clock (never the timestamps in the
  record: clocks of different nodes need not agree);
* every write carries the ``resourceVersion`` read, so of two candidates racing, the API
  server lets one win (409 Conflict for the other);
* the leader renews every ``retry_period_s``; when no renewal has succeeded for
  ``renew_deadline_s`` it stops leading and calls ``on_lost`` (controller-runtime then ends
  the process, and so does ``kvgate epp``);
* :meth:`LeaderElector.stop` releases a held Lease (empty holder, 1 s duration), as
  ``LeaderElectionReleaseOnCancel`` does, so the next replica takes over at once.

Defaults are controller-runtime's: 15 s lease, 10 s renew deadline, 2 s retry period.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from kvgate.errors import KvgateError

log = logging.getLogger("kvgate.k8s.lease")

#: The API group and resource written; kvgate.k8s.access turns them into the EPP's RBAC.
GROUP = "coordination.k8s.io"
RESOURCE = "leases"
#: What an elector does with its Lease: read it, create it, replace it (take, renew, release).
VERBS = ("get", "create", "update")

LEASE_DURATION_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0


def lease_name(namespace: str, pool_name: str) -> str:
    """The Lease llm-d-router's EPP elects on (unique per EPP deployment)."""
    return f"epp-{namespace}-{pool_name}.llm-d.ai"


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def _now() -> str:
    """A Kubernetes MicroTime."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Conflict(Exception):
    """409 or an existing object on create: another candidate wrote first."""


class LeaderElector:
    """Holds or waits for one Lease; :attr:`is_leader` is what the health service reports.

    ``api_client`` is a ``kubernetes.aio`` ApiClient (:func:`kvgate.k8s.apiclient.connect`).
    Invariant: ``renew_deadline_s < lease_duration_s`` and ``retry_period_s <
    renew_deadline_s`` (checked here), so a leader gives up before another may take over.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        name: str,
        identity: str | None = None,
        lease_duration_s: float = LEASE_DURATION_S,
        renew_deadline_s: float = RENEW_DEADLINE_S,
        retry_period_s: float = RETRY_PERIOD_S,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise KvgateError(
                "leader election: expected retry period < renew deadline < lease duration, got "
                f"{retry_period_s}s, {renew_deadline_s}s, {lease_duration_s}s"
            )
        self.api = api_client
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.on_lost = on_lost
        self.is_leader = False
        self.elected = asyncio.Event()
        self._observed: str | None = None  # the spec last read, as JSON
        self._observed_at = 0.0  # time.monotonic() when it last changed
        self._task: asyncio.Task[None] | None = None
        self._path = f"/apis/{GROUP}/v1/namespaces/{namespace}/{RESOURCE}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lease {self.name}")

    async def stop(self) -> None:
        """Stop electing; release the Lease if held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.is_leader:
            self.is_leader = False
            with contextlib.suppress(Exception):  # best effort: the lease expires anyway
                lease = await self._get()
                if lease is not None and lease["spec"].get("holderIdentity") == self.identity:
                    spec = lease["spec"]
                    spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_now())
                    await self._write("PUT", lease)
                    log.info("released lease %s/%s", self.namespace, self.name)

    async def _run(self) -> None:
        while not self.is_leader:  # acquire
            if await self._try():
                self.is_leader = True
                self.elected.set()
                log.info(
                    "%s is now the leader (lease %s/%s)", self.identity, self.namespace, self.name
                )
                break
            await asyncio.sleep(self.retry_period_s)
        last_renew = time.monotonic()
        while True:  # renew
            await asyncio.sleep(self.retry_period_s)
            if await self._try():
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew > self.renew_deadline_s:
                self.is_leader = False
                log.error("leader election lost: lease %s/%s not renewed for %gs",
                          self.namespace, self.name, self.renew_deadline_s)  # fmt: skip
                if self.on_lost is not None:
                    self.on_lost()
                return

    async def _try(self) -> bool:
        """One acquire-or-renew round; True when this candidate holds the Lease after it."""
        try:
            return await self._try_once()
        except _Conflict:
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API server is down or answers badly: try next round
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    async def _try_once(self) -> bool:
        now = _now()
        seconds = max(1, round(self.lease_duration_s))
        lease = await self._get()
        if lease is None:
            spec = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            await self._write(
                "POST",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec,
                },
            )
            self._observe(spec)
            return True
        spec = lease.setdefault("spec", {})
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        mine = holder == self.identity
        expired = time.monotonic() >= self._observed_at + float(
            spec.get("leaseDurationSeconds") or seconds
        )
        if holder and not mine and not expired:
            return False
        if not mine:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=seconds, renewTime=now)
        await self._write("PUT", lease)  # metadata.resourceVersion as read: 409 if it moved
        self._observe(spec)
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        raw = json.dumps(spec, sort_keys=True)
        if raw != self._observed:
            self._observed = raw
            self._observed_at = time.monotonic()

    async def _get(self) -> dict[str, Any] | None:
        status, body = await self._call("GET", f"{self._path}/{self.name}")
        if status == 404:
            return None
        if status != 200:
            raise KvgateError(f"GET lease {self.namespace}/{self.name}: {status} {body[:200]}")
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise KvgateError(f"GET lease {self.namespace}/{self.name}: not a JSON object")
        return obj

    async def _write(self, method: str, lease: dict[str, Any]) -> None:
        path = self._path if method == "POST" else f"{self._path}/{self.name}"
        status, body = await self._call(method, path, lease)
        if status == 409:
            raise _Conflict()
        if status not in (200, 201):
            raise KvgateError(f"{method} lease {self.namespace}/{self.name}: {status} {body[:200]}")

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """One API request through the client's own auth and TLS; any status comes back."""
        serialized = await self.api.param_serialize(
            method,
            path,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        method, url, headers, data = serialized[:4]
        resp = await self.api.call_api(
            method,
            url,
            header_params=headers,
            body=data,
            _request_timeout=max(self.retry_period_s, 1.0),
        )
        async with resp.response as raw:
            return int(raw.status), await raw.text()
