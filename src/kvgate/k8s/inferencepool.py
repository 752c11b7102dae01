"""InferencePool and Pod objects as discovery needs them: pure functions over API JSON.

Two API versions of the pool exist in the wild (GIE api/v1 and apix/v1alpha2):

* v1, group ``inference.networking.k8s.io``: ``spec.selector.matchLabels``,
  ``spec.targetPorts[].number`` (up to 8), ``spec.endpointPickerRef``;
* v1alpha2, group ``inference.networking.x-k8s.io``: ``spec.selector`` (a plain label map),
  ``spec.targetPortNumber``, ``spec.extensionRef``.

An endpoint exists for every (Ready pod, target port): GIE v1.1+ names it
``<namespace>/<pod>-rank-<i>`` with the pod IP and the i-th port. Ready means no
``deletionTimestamp``, condition ``Ready=True``, a pod IP, and labels matching the selector
(GIE pkg/epp/util/pod, datastore).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvgate.endpoints.pool import EndpointSpec

GROUP_V1 = "inference.networking.k8s.io"
GROUP_V1ALPHA2 = "inference.networking.x-k8s.io"
#: API version served for each group.
VERSION_OF_GROUP = {GROUP_V1: "v1", GROUP_V1ALPHA2: "v1alpha2"}
PLURAL = "inferencepools"


class PoolSpecError(ValueError):
    """The InferencePool object lacks what discovery needs; the message names the field."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What discovery reads from an InferencePool."""

    name: str
    namespace: str
    selector: Mapping[str, str]
    target_ports: tuple[int, ...]

    @property
    def label_selector(self) -> str:
        """The selector as the API's ``labelSelector`` query value."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


def version_for_group(group: str) -> str:
    try:
        return VERSION_OF_GROUP[group]
    except KeyError:
        known = ", ".join(sorted(VERSION_OF_GROUP))
        raise PoolSpecError(f"--pool-group {group!r}: expected one of {known}") from None


def parse_pool(obj: Mapping[str, Any]) -> PoolSpec:
    """Read selector and ports from an InferencePool of either API version."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise PoolSpecError(f"InferencePool {name}: spec is missing")
    raw_selector = spec.get("selector")
    if isinstance(raw_selector, Mapping) and isinstance(raw_selector.get("matchLabels"), Mapping):
        selector = dict(raw_selector["matchLabels"])  # v1
    elif isinstance(raw_selector, Mapping):
        selector = dict(raw_selector)  # v1alpha2
    else:
        raise PoolSpecError(f"InferencePool {name}: spec.selector must be a label map")
    if not selector or not all(isinstance(v, str) for v in selector.values()):
        raise PoolSpecError(f"InferencePool {name}: spec.selector must have string labels")
    ports: list[int] = []
    if isinstance(spec.get("targetPorts"), list):
        for i, item in enumerate(spec["targetPorts"]):
            number = item.get("number") if isinstance(item, Mapping) else None
            if not isinstance(number, int):
                raise PoolSpecError(
                    f"InferencePool {name}: spec.targetPorts[{i}].number must be an integer"
                )
            ports.append(number)
    elif isinstance(spec.get("targetPortNumber"), int):
        ports.append(spec["targetPortNumber"])
    if not ports:
        raise PoolSpecError(
            f"InferencePool {name}: spec.targetPorts (v1) or spec.targetPortNumber (v1alpha2) "
            "is required"
        )
    return PoolSpec(name, str(meta.get("namespace", "")), selector, tuple(ports))


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def endpoint_name(namespace: str, pod_name: str, rank: int) -> str:
    return f"{namespace}/{pod_name}-rank-{rank}"


def endpoints_of_pod(
    pool: PoolSpec, pod: Mapping[str, Any], scheme: str = "http"
) -> list[EndpointSpec]:
    """The endpoints a pod contributes: one per target port if it is Ready and selected."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not labels_match(pool.selector, labels) or not pod_is_ready(pod):
        return []
    namespace = str(meta.get("namespace") or pool.namespace)
    ip = str(pod["status"]["podIP"])
    return [
        EndpointSpec(
            name=endpoint_name(namespace, str(meta.get("name")), i),
            address=ip,
            port=port,
            labels={str(k): str(v) for k, v in labels.items()},
            scheme=scheme,
        )
        for i, port in enumerate(pool.target_ports)
    ]
