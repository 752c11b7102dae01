"""The Kubernetes API connection and the list/watch reading every kvgate watcher shares.

Used by :mod:`kvgate.k8s.discovery` (InferencePool pods) and :mod:`kvgate.k8s.objectives`
(InferenceObjective priorities). Both use the official client's asyncio flavour
(``kubernetes.aio``) and read response bodies as raw JSON (``*_without_preload_content``):
the generated model classes are not needed and would cost a deserialisation per event.

Errors, as the watchers see them:

* :class:`WatchExpired` -- 410 Gone (answer status or a watch ``ERROR`` event): the
  resourceVersion held is older than the server's history; the caller re-lists.
* :class:`NotFound` -- 404: the object does not exist or, for a collection, the server does
  not serve that group/version/resource (its CRD is not installed).
* :class:`~kvgate.errors.KvgateError` -- any other non-200 answer, with status and body.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from kvgate.errors import KvgateError

#: Where a pod finds its ServiceAccount token; its presence means "running in a cluster".
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class WatchExpired(Exception):
    """The server answered 410 Gone: the resourceVersion is too old; re-list."""


class NotFound(KvgateError):
    """404: no such object, or (on a collection) a resource the server does not serve."""


async def connect(kubeconfig: str | None) -> Any:
    """An ``ApiClient`` from ``kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``; the
    in-cluster ServiceAccount when none of those is given and the token file exists."""
    from kubernetes.aio import client, config

    configuration = client.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG") or not os.path.exists(SA_TOKEN):
        await config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def _raise_for(resp: aiohttp.ClientResponse, text: str, what: str) -> None:
    if resp.status == 410:
        raise WatchExpired()
    if resp.status == 404:
        raise NotFound(f"Kubernetes API {resp.method} {resp.url.path}: 404 {text[:300]}")
    raise KvgateError(
        f"Kubernetes {what} {resp.method} {resp.url.path}: {resp.status} {text[:300]}"
    )


async def json_or_raise(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of a GET/LIST answer; raises as the module docstring says."""
    async with resp:
        text = await resp.text()
        if resp.status != 200:
            _raise_for(resp, text, "API")
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise KvgateError(f"Kubernetes API {resp.url.path}: expected a JSON object")
    return obj


async def watch_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(type, object) of each line of a watch stream; ends when the server ends the watch
    (``timeoutSeconds``); raises WatchExpired on 410 (answer or ``ERROR`` event)."""
    async with resp:
        if resp.status != 200:
            _raise_for(resp, await resp.text(), "watch")
        while True:
            line = await resp.content.readline()
            if not line:
                return
            if not line.strip():
                continue
            event = json.loads(line)
            etype = event.get("type", "")
            obj = event.get("object") or {}
            if etype == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired()
                raise KvgateError(f"watch error: {obj.get('code')} {obj.get('message')}")
            yield etype, obj
