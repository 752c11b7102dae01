"""Model-server engines: plan, start, watch and stop replicas of real vLLM or ``kvgate sim``.

The API ``kvgate up`` and ``kvgate bench`` build on::

    from kvgate.engines import EngineConfig, Supervisor, plan_launch, resolve_model

    model = resolve_model("hf://HuggingFaceTB/SmolLM2-135M-Instruct")   # or require_local=False for sim
    plan = plan_launch(EngineConfig(engine="vllm", model=model, run_dir=run_dir), num_replicas=2)
    async with Supervisor(plan) as sup:        # spawns every replica in its own process group
        await sup.wait_ready()                 # progress shown; EngineError with the log tail
        ...                                    # plan.endpoints -> kvgate serve --endpoint ...
    # leaving the block: SIGTERM, then SIGKILL after the grace period
"""

from __future__ import annotations

from kvgate.engines.base import (
    CPU_BLOCK_SIZE,
    ENGINE_KINDS,
    GPU_BLOCK_SIZE,
    EngineConfig,
    EngineKind,
    LaunchPlan,
    ModelSource,
    ReplicaSpec,
)
from kvgate.engines.model import prepare_model, resolve_model
from kvgate.engines.supervisor import ReplicaEvent, ReplicaProcess, Supervisor
from kvgate.errors import EngineError

__all__ = [
    "CPU_BLOCK_SIZE",
    "ENGINE_KINDS",
    "GPU_BLOCK_SIZE",
    "EngineConfig",
    "EngineKind",
    "LaunchPlan",
    "ModelSource",
    "ReplicaEvent",
    "ReplicaProcess",
    "ReplicaSpec",
    "Supervisor",
    "plan_launch",
    "prepare_model",
    "resolve_model",
]


def plan_launch(config: EngineConfig, num_replicas: int) -> LaunchPlan:
    """The processes for ``num_replicas`` replicas of ``config.engine``."""
    if config.engine == "vllm":
        from kvgate.engines.vllm import plan_vllm

        return plan_vllm(config, num_replicas)
    if config.engine == "sim":
        from kvgate.engines.sim import plan_sim

        return plan_sim(config, num_replicas)
    raise EngineError(f"unknown engine {config.engine!r} (known: {', '.join(ENGINE_KINDS)})")
