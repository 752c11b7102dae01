"""Policies of ``kvgate bench compare`` that change the cluster as well as the router.

Two kinds, named like the other policies:

* ``pd`` -- prefill/decode disaggregation as KServe deploys a service with ``spec.prefill``:
  the first ``prefill_replicas`` replicas (default: half, rounded down) are NIXL
  ``kv_producer``s labelled ``llm-d.ai/role: prefill``, the rest ``kv_consumer``s labelled
  ``decode``, behind KServe's P/D default scheduler config (every request disaggregated;
  ``kvgate serve`` runs both legs). The simulated KV link is ``kv_link`` (``rdma`` or
  ``nvlink``, :mod:`kvgate.sim.kvtransfer`). The replica count is the same as the
  aggregated policies', so the comparison is at equal hardware.
* ``<policy>+cpu-tier`` -- llm-d's tiered-prefix-cache guide: every replica gets a CPU tier
  of ``cpu_offload_blocks`` blocks (vLLM's native offloading; ``kvgate sim
  --kv-offload-blocks``). For ``llm-d-default`` the router also runs the guide's second
  approximate prefix scorer (``cpu-prefix-cache-scorer`` over an
  ``approx-prefix-cache-producer`` whose LRU holds GPU + CPU blocks); ``precise`` reads the
  tier from the replicas' KV events (``medium: CPU``, weight 0.8) with its config unchanged;
  any other policy keeps its config and only its replicas change.

Invariants: a variant never changes the workload or the offered load; replica ``i`` keeps
its port and name; :func:`parse_policy` accepts every other policy name unchanged (so
``llm-d-default+flow-control`` stays one policy).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from kvgate.engines.base import LaunchPlan
from kvgate.k8s.disagg import PD_DEFAULT_CONFIG, ROLE_LABEL

PD_POLICY = "pd"
CPU_TIER_SUFFIX = "+cpu-tier"
KV_LINKS = ("rdma", "nvlink")
#: llm-d raises the approximate producer's block to this many tokens (see its module).
_PRODUCER_BLOCK_TOKENS = 64


class VariantError(ValueError):
    """A P/D or CPU-tier policy cannot run with this cluster (the message says why)."""


@dataclass(frozen=True, slots=True)
class PolicyVariant:
    """A policy name split into the router's policy and what it changes in the cluster."""

    name: str  # as given, the run's label
    base: str  # the router policy (``pd`` for P/D)
    pd: bool = False
    cpu_tier: bool = False


def parse_policy(name: str) -> PolicyVariant:
    """``pd``, ``<policy>+cpu-tier`` or any other policy (unchanged)."""
    cpu_tier = name.endswith(CPU_TIER_SUFFIX)
    base = name.removesuffix(CPU_TIER_SUFFIX) if cpu_tier else name
    return PolicyVariant(name=name, base=base, pd=base == PD_POLICY, cpu_tier=cpu_tier)


def tiered_config(cpu_lru_blocks: int) -> str:
    """llm-d's tiered-prefix-cache guide config (queue 2, kv-utilization 2, GPU prefix 1,
    CPU prefix 1), its CPU producer's LRU sized ``cpu_lru_blocks`` blocks of 64 tokens."""
    doc = {
        "apiVersion": "llm-d.ai/v1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer", "name": "gpu-prefix-cache-scorer"},
            {
                "type": "approx-prefix-cache-producer",
                "name": "cpuPrefixProducer",
                "parameters": {"autoTune": False, "lruCapacityPerServer": cpu_lru_blocks},
            },
            {
                "type": "prefix-cache-scorer",
                "name": "cpu-prefix-cache-scorer",
                "parameters": {"prefixMatchInfoProducerName": "cpuPrefixProducer"},
            },
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "gpu-prefix-cache-scorer", "weight": 1},
                    {"pluginRef": "cpu-prefix-cache-scorer", "weight": 1},
                ],
            }
        ],
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def variant_config(
    variant: PolicyVariant, *, gpu_blocks: int | None, cpu_blocks: int | None, block_size: int
) -> str | None:
    """The router config a variant replaces its base's with, or None (the base's own)."""
    if variant.pd:
        return PD_DEFAULT_CONFIG
    if variant.cpu_tier and variant.base == "llm-d-default":
        tokens = ((gpu_blocks or 0) + (cpu_blocks or 0)) * block_size
        return tiered_config(max(1, tokens // _PRODUCER_BLOCK_TOKENS))
    return None


def sim_cpu_tier_args(variant: PolicyVariant, cpu_blocks: int | None) -> list[str]:
    """``--kv-offload-blocks`` for a ``+cpu-tier`` variant (an error without a size)."""
    if not variant.cpu_tier:
        return []
    if not cpu_blocks:
        raise VariantError(f"{variant.name}: needs --cpu-offload-blocks N (the CPU tier's size)")
    return ["--kv-offload-blocks", str(cpu_blocks)]


def pd_roles(num_replicas: int, prefill_replicas: int | None) -> list[str]:
    """``prefill`` for the first replicas, ``decode`` for the rest (at least one of each)."""
    prefill = num_replicas // 2 if prefill_replicas is None else prefill_replicas
    if not 1 <= prefill < num_replicas:
        raise VariantError(
            f"pd: --prefill-replicas: expected 1..{num_replicas - 1} of {num_replicas} "
            f"replicas, got {prefill}"
        )
    return ["prefill"] * prefill + ["decode"] * (num_replicas - prefill)


def with_pd_roles(plan: LaunchPlan, roles: Sequence[str], kv_link: str) -> LaunchPlan:
    """``plan`` with each simulated replica's NIXL role (``--kv-transfer-config``)."""
    if plan.engine != "sim":
        raise VariantError("pd: the P/D comparison runs on the simulator (--engine sim)")
    if kv_link not in KV_LINKS:
        raise VariantError(f"pd: --kv-link: expected one of {', '.join(KV_LINKS)}, got {kv_link!r}")
    replicas = []
    for spec, role in zip(plan.replicas, roles, strict=True):
        kvt = {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
            "kv_connector_extra_config": {"sim_link": kv_link},
        }
        argv = (*spec.argv, "--kv-transfer-config", json.dumps(kvt, separators=(",", ":")))
        replicas.append(dataclasses.replace(spec, name=f"{role}-{spec.index}", argv=argv))
    return dataclasses.replace(plan, replicas=tuple(replicas))


def endpoints_file(plan: LaunchPlan, roles: Sequence[str], path: Path) -> Path:
    """An ``--endpoints-file`` with each replica's ``llm-d.ai/role`` label."""
    items = [
        {"url": spec.base_url, "name": spec.name, "labels": {ROLE_LABEL: role}}
        for spec, role in zip(plan.replicas, roles, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(items, sort_keys=False))
    return path
