"""The P/D and KV-offloading parts of an LLMInferenceService, shared by ``up`` and ``render``.

KServe's ``LLMInferenceService`` describes P/D with a second workload: ``spec`` (replicas,
template) is the **decode** side and ``spec.prefill`` (its own replicas and template) the
**prefill** side; KServe labels their pods ``llm-d.ai/role: decode`` / ``prefill``, puts
llm-d's routing sidecar in front of each decode vLLM and, when the service names no
scheduler config, gives the EPP its P/D default (:data:`PD_DEFAULT_CONFIG`).

CPU offloading is ``kvCacheOffloading`` on either workload (KServe's
``KVCacheOffloadingSpec``: ``cpu`` a quantity, ``evictionPolicy`` ``lru`` | ``arc``), which
KServe turns into vLLM's ``--kv-transfer-config`` with the ``OffloadingConnector``
(``spec_name: TieringOffloadingSpec``, ``cpu_bytes_to_use``).

Invariants:

* :func:`workloads` returns the decode (or the only) workload first, then prefill; a service
  without ``spec.prefill`` has one workload of role ``both``.
* :func:`kv_transfer_config` gives one JSON object per workload: NIXL alone for P/D, the
  OffloadingConnector alone for offloading, vLLM's ``MultiConnector`` over both when a P/D
  workload also offloads; None when neither applies. A ``--kv-transfer-config`` already in
  the workload's ``VLLM_ADDITIONAL_ARGS`` wins: nothing is added (the user's flag is kept,
  never silently replaced).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kvgate.config.llmisvc import LLMInferenceService
from kvgate.config.loader import load_picker_config_text
from kvgate.config.model import PickerConfig
from kvgate.errors import ConfigError, Problem
from kvgate.flowcontrol.config import parse_quantity

Role = Literal["both", "decode", "prefill"]
ROLE_LABEL = "llm-d.ai/role"
KV_TRANSFER_FLAG = "--kv-transfer-config"
EVICTION_POLICIES = ("lru", "arc")
#: spec.prefill fields kvgate acts on (``worker`` and ``parallelism`` are refused by name;
#: labels, annotations and rolloutStrategy are rendered onto the prefill Deployment, see
#: kvgate.k8s.specfields, which also refuses ``scaling`` first).
_PREFILL_FIELDS = (
    "replicas",
    "template",
    "kvCacheOffloading",
    "worker",
    "parallelism",
    "labels",
    "annotations",
    "rolloutStrategy",
)

#: KServe's default scheduler config for a service with ``spec.prefill`` and no config of its
#: own (pkg/controller/v1alpha2/llmisvc/scheduler.go; a verbatim copy is in
#: tests/data/llm-d-configs/): every long request disaggregated; prefill = prefix 3, queue 2,
#: kv-utilization 2; decode = active-request 2, prefix 3.
PD_DEFAULT_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disagg-headers-handler
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: active-request-scorer
- type: prefix-cache-scorer
- type: max-score-picker
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: always-disagg-pd-decider
schedulingProfiles:
- name: prefill
  plugins:
  - {pluginRef: prefill-filter}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
- name: decode
  plugins:
  - {pluginRef: decode-filter}
  - {pluginRef: active-request-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
"""


@dataclass(frozen=True, slots=True)
class Offloading:
    """``kvCacheOffloading``: the CPU tier of one workload's vLLM."""

    cpu_bytes: int
    eviction_policy: str | None = None  # None: vLLM's default (lru)


@dataclass(frozen=True, slots=True)
class Workload:
    """One replica set of the service: decode (``spec``) or prefill (``spec.prefill``)."""

    role: Role
    path: str  # "spec" or "spec.prefill": where its fields live in the file
    replicas: int
    pod: Mapping[str, Any]  # the raw PodSpec (template)
    additional_args: tuple[str, ...]  # VLLM_ADDITIONAL_ARGS of its main container
    offloading: Offloading | None

    @property
    def name_suffix(self) -> str:
        """KServe's workload name suffix: ``-kserve`` or ``-kserve-prefill``."""
        return "-kserve-prefill" if self.role == "prefill" else "-kserve"

    @property
    def has_own_kv_transfer(self) -> bool:
        return any(a.split("=", 1)[0] == KV_TRANSFER_FLAG for a in self.additional_args)


def scheduler_config(svc: LLMInferenceService) -> tuple[PickerConfig, str]:
    """(config, text) the EPP runs: the service's own, or KServe's P/D default for a P/D
    service that names none (as KServe's controller does)."""
    if is_disaggregated(svc) and svc.picker_config_origin == "default":
        text = PD_DEFAULT_CONFIG
        return load_picker_config_text(text, "<KServe P/D default>"), text
    return svc.require_picker_config(), svc.picker_config_text


def _fail(svc: LLMInferenceService, path: str, message: str) -> ConfigError:
    return ConfigError([Problem(svc.source, path, message)])


def _spec(svc: LLMInferenceService) -> Mapping[str, Any]:
    spec = svc.raw.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def is_disaggregated(svc: LLMInferenceService) -> bool:
    """The service has a ``spec.prefill`` workload."""
    return _spec(svc).get("prefill") is not None


def _offloading(svc: LLMInferenceService, where: Mapping[str, Any], path: str) -> Offloading | None:
    raw = where.get("kvCacheOffloading")
    if raw is None:
        return None
    path = f"{path}.kvCacheOffloading"
    if not isinstance(raw, Mapping):
        raise _fail(svc, path, "expected a mapping with 'cpu' (a quantity such as 10Gi)")
    for key in raw:
        if key not in ("cpu", "evictionPolicy", "secondary"):
            raise _fail(svc, f"{path}.{key}", "unknown field (known: cpu, evictionPolicy)")
    if raw.get("secondary"):
        raise _fail(
            svc,
            f"{path}.secondary",
            "secondary (file-system) KV tiers are not rendered by kvgate; use the CPU tier alone",
        )
    cpu = parse_quantity(raw.get("cpu"))
    if not cpu:
        raise _fail(
            svc, f"{path}.cpu", f"expected a quantity > 0 (e.g. 10Gi), got {raw.get('cpu')!r}"
        )
    policy = raw.get("evictionPolicy")
    if policy is not None and policy not in EVICTION_POLICIES:
        raise _fail(svc, f"{path}.evictionPolicy", f"expected lru or arc, got {policy!r}")
    return Offloading(cpu_bytes=cpu, eviction_policy=policy)


def _main_env_args(pod: Mapping[str, Any]) -> tuple[str, ...]:
    containers = [c for c in pod.get("containers") or [] if isinstance(c, Mapping)]
    main = next((c for c in containers if c.get("name") == "main"), None)
    main = main or (containers[0] if containers else {})
    for item in main.get("env") or []:
        if isinstance(item, Mapping) and item.get("name") == "VLLM_ADDITIONAL_ARGS":
            return tuple(shlex.split(str(item.get("value") or "")))
    return ()


def workloads(svc: LLMInferenceService) -> tuple[Workload, ...]:
    """The service's replica sets: decode (or ``both``) first, then prefill when present."""
    spec = _spec(svc)
    template = spec.get("template")
    main = Workload(
        role="decode" if is_disaggregated(svc) else "both",
        path="spec",
        replicas=svc.replicas,
        pod=template if isinstance(template, Mapping) else {},
        additional_args=tuple(svc.vllm_additional_args),
        offloading=_offloading(svc, spec, "spec"),
    )
    if not is_disaggregated(svc):
        return (main,)
    prefill = spec["prefill"]
    if not isinstance(prefill, Mapping):
        raise _fail(svc, "spec.prefill", "expected a workload (replicas, template)")
    for key in prefill:
        if key not in _PREFILL_FIELDS:
            raise _fail(
                svc,
                f"spec.prefill.{key}",
                f"not run or rendered by kvgate (it reads: {', '.join(_PREFILL_FIELDS)})",
            )
    replicas = prefill.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise _fail(svc, "spec.prefill.replicas", f"expected an integer >= 0, got {replicas!r}")
    for key in ("worker", "parallelism"):
        if prefill.get(key) is not None:
            raise _fail(
                svc,
                f"spec.prefill.{key}",
                "multi-node or parallel prefill is not rendered by kvgate; one pod per "
                "prefill replica",
            )
    pod = prefill.get("template")
    if pod is not None and not isinstance(pod, Mapping):
        raise _fail(svc, "spec.prefill.template", "expected a pod spec (mapping)")
    pod = pod if pod is not None else main.pod  # KServe: the prefill template defaults to spec's
    return (
        main,
        Workload(
            role="prefill",
            path="spec.prefill",
            replicas=replicas,
            pod=pod,
            additional_args=_main_env_args(pod),
            offloading=_offloading(svc, prefill, "spec.prefill"),
        ),
    )


def offloading_connector(offloading: Offloading) -> dict[str, Any]:
    """vLLM's native CPU tier as KServe writes it for ``kvCacheOffloading``."""
    extra: dict[str, Any] = {
        "spec_name": "TieringOffloadingSpec",
        "cpu_bytes_to_use": offloading.cpu_bytes,
    }
    if offloading.eviction_policy:
        extra["eviction_policy"] = offloading.eviction_policy
    return {
        "kv_connector": "OffloadingConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": extra,
    }


def nixl_connector(role: str = "kv_both") -> dict[str, Any]:
    """vLLM's NIXL connector as llm-d's P/D guide runs it (``kv_both`` on both sides)."""
    return {"kv_connector": "NixlConnector", "kv_role": role}


def kv_transfer_config(workload: Workload, *, disaggregated: bool) -> dict[str, Any] | None:
    """The ``--kv-transfer-config`` object for ``workload`` (see the module's invariants)."""
    if workload.has_own_kv_transfer:
        return None
    nixl = nixl_connector() if disaggregated else None
    offload = offloading_connector(workload.offloading) if workload.offloading else None
    if nixl and offload:
        return {
            "kv_connector": "MultiConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"connectors": [nixl, offload]},
        }
    return nixl or offload


def kv_transfer_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"))


def sim_offload_blocks(offloading: Offloading, *, block_size: int, kv_bytes_per_token: int) -> int:
    """The simulator's ``--kv-offload-blocks`` holding ``cpu_bytes`` of this model's KV."""
    return max(1, offloading.cpu_bytes // max(1, block_size * kv_bytes_per_token))
