"""Every workload of an LLMInferenceService as one launch plan: aggregated, or P/D.

Without ``spec.prefill`` the plan is ``spec.replicas`` identical replicas named
``replica-<i>`` (unchanged). With it, the decode workload (``spec``) gives ``decode-<i>``
and ``spec.prefill`` gives ``prefill-<i>``, each with vLLM's ``--kv-transfer-config`` for
its role, and the endpoints carry ``llm-d.ai/role`` so the P/D scheduler config's
prefill-filter and decode-filter find them. ``kvCacheOffloading`` on a workload becomes
the OffloadingConnector for vLLM and ``--kv-offload-blocks`` (the same bytes in blocks)
for the simulator.

Invariants: replica ``index`` equals its position in the plan (the supervisor restarts by
index); no two replicas share a port; the simulator gets NIXL roles it checks
(``kv_producer`` for prefill, ``kv_consumer`` for decode) where vLLM gets llm-d's
``kv_both`` on both sides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.config.llmisvc import LLMInferenceService
from kvgate.engines import EngineConfig, LaunchPlan, ReplicaSpec, plan_launch
from kvgate.engines.connectors import (
    NIXL_CONNECTORS,
    cpu_connector_problem,
    cpu_kv_transfer_problem,
)
from kvgate.engines.hosts import free_port
from kvgate.engines.vllm import engine_python
from kvgate.errors import ConfigError, EngineError, Problem
from kvgate.k8s import disagg
from kvgate.k8s.disagg import ROLE_LABEL, Workload, scheduler_config

__all__ = ["ClusterPlan", "plan_cluster", "role_args", "scheduler_config"]

_PLAN_ATTEMPTS = 8  # free ports are picked per plan; re-plan when two plans pick the same


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """One plan over every workload, and each replica's role (``both``/``decode``/``prefill``)."""

    plan: LaunchPlan
    roles: Mapping[str, str]  # replica name -> role
    disaggregated: bool

    def endpoint_labels(self, name: str) -> dict[str, str]:
        labels = {"kvgate.replica": name}
        if self.disaggregated:
            labels[ROLE_LABEL] = self.roles[name]
        return labels


def _sim_kv_bytes_per_token(config: EngineConfig) -> int:
    if config.model.kv_bytes_per_token:
        return config.model.kv_bytes_per_token
    from kvgate.sim.profiles import DEFAULT_PROFILE, load_profile

    return load_profile(config.sim_profile or DEFAULT_PROFILE).kv_bytes_per_token


def _check_cpu_connectors(
    svc: LLMInferenceService, workload: Workload, kvt: Mapping[str, Any], config: EngineConfig
) -> None:
    """Refuse, naming the service's field, what vLLM's CPU build cannot run (engines/connectors)."""
    problem = cpu_connector_problem(kvt, engine_python(config))
    if problem is None:
        return
    name, why = problem
    field = "spec.prefill" if name in NIXL_CONNECTORS else f"{workload.path}.kvCacheOffloading"
    raise ConfigError([Problem(svc.source, field, why)])


def role_args(
    workload: Workload, spec: ReplicaSpec, config: EngineConfig, *, disaggregated: bool
) -> list[str]:
    """The flags that make a planned replica play ``workload``'s role (see the invariants)."""
    if config.engine == "vllm":
        kvt = disagg.kv_transfer_config(workload, disaggregated=disaggregated)
        return [disagg.KV_TRANSFER_FLAG, disagg.kv_transfer_json(kvt)] if kvt else []
    args: list[str] = []
    if disaggregated and not workload.has_own_kv_transfer:
        role = "kv_producer" if workload.role == "prefill" else "kv_consumer"
        args += [disagg.KV_TRANSFER_FLAG, disagg.kv_transfer_json(disagg.nixl_connector(role))]
    if workload.offloading is not None:
        blocks = disagg.sim_offload_blocks(
            workload.offloading,
            block_size=spec.block_size,
            kv_bytes_per_token=_sim_kv_bytes_per_token(config),
        )
        args += ["--kv-offload-blocks", str(blocks)]
    return args


def _plans(
    configs: Sequence[tuple[Workload, EngineConfig, int]],
) -> list[LaunchPlan]:
    for _ in range(_PLAN_ATTEMPTS):
        plans = [plan_launch(config, n) for _, config, n in configs]
        ports = [r.port for p in plans for r in p.replicas]
        if len(ports) == len(set(ports)):
            return plans
    raise EngineError("could not find distinct free ports for the prefill and decode replicas")


def plan_cluster(
    svc: LLMInferenceService,
    base: EngineConfig,
    *,
    replicas: int | None = None,
    lora_args: Sequence[str] = (),
) -> ClusterPlan:
    """Plan every workload of ``svc`` with ``base`` (engine, model, run dir, KV events).

    ``replicas`` overrides ``spec.replicas`` (the decode side of a P/D service).
    """
    loads = disagg.workloads(svc)
    pd = disagg.is_disaggregated(svc)
    configs: list[tuple[Workload, EngineConfig, int]] = []
    for load in loads:
        count = replicas if replicas is not None and load.path == "spec" else load.replicas
        if count < 1:
            raise EngineError(f"{load.path}.replicas: at least one {load.role} replica is needed")
        config = dataclasses.replace(base, extra_args=(*load.additional_args, *lora_args))
        configs.append((load, config, count))
    try:
        plans = _plans(configs)
    except EngineError:
        # A CPU plan refuses KV flags the CPU build cannot run; name the workload they came from.
        for load, config, _ in configs:
            problem = cpu_kv_transfer_problem(load.additional_args, engine_python(config))
            if problem:
                where = f"{load.path}.template VLLM_ADDITIONAL_ARGS"
                raise ConfigError([Problem(svc.source, where, problem)]) from None
        raise
    specs: list[ReplicaSpec] = []
    roles: dict[str, str] = {}
    notes: list[str] = []
    taken = {r.port for p in plans for r in p.replicas}
    for (load, config, _), plan in zip(configs, plans, strict=True):
        notes.extend(n for n in plan.notes if n not in notes)
        kvt = disagg.kv_transfer_config(load, disaggregated=pd)
        if config.engine == "vllm" and kvt and any(r.cpus is not None for r in plan.replicas):
            _check_cpu_connectors(svc, load, kvt, config)
        for i, spec in enumerate(plan.replicas):
            name = spec.name if not pd else f"{load.role}-{i}"
            env = dict(spec.env)
            if pd and config.engine == "vllm":
                # vLLM's NIXL side channel listens on one port per instance: distinct per host.
                port = free_port(spec.host, taken)
                taken.add(port)
                env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(port)
            specs.append(
                dataclasses.replace(
                    spec,
                    index=len(specs),
                    name=name,
                    argv=(*spec.argv, *role_args(load, spec, config, disaggregated=pd)),
                    env=env,
                    log_path=spec.log_path.with_name(f"{name}.log"),
                )
            )
            roles[name] = load.role
    first = plans[0]
    combined = dataclasses.replace(
        first,
        replicas=tuple(specs),
        ready_timeout_s=max(p.ready_timeout_s for p in plans),
        notes=tuple(notes),
    )
    return ClusterPlan(plan=combined, roles=roles, disaggregated=pd)
