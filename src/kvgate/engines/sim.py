"""Launch plans for simulated replicas (``kvgate sim``), configured like the vLLM ones.

The same :class:`EngineConfig` gives the simulator the same served model name, block size,
hash algorithm, KV-event endpoints and topic as a vLLM replica would get, and -- when the
config gives vLLM's KV cache in bytes -- the same number of cache blocks, so a simulated
cluster behaves like the real one from the router's side.
"""

from __future__ import annotations

import sys

from kvgate.engines.base import CPU_BLOCK_SIZE, EngineConfig, LaunchPlan, ReplicaSpec
from kvgate.engines.hosts import flag_value, free_port, merge_args
from kvgate.engines.vllm import PROTECTED_FLAGS, event_topic, kv_events_config
from kvgate.errors import EngineError

#: Flags of ``kvgate sim`` that may come through extra arguments (VLLM_ADDITIONAL_ARGS);
#: other vLLM flags mean nothing to the simulator and are dropped with a note.
SIM_FLAGS = frozenset(
    {
        "--profile",
        "--speed",
        "--block-size",
        "--num-gpu-blocks",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--max-model-len",
        "--tokenizer",
        "--mode",
        "--seed",
        "--kv-events-format",
        "--kv-offload-blocks",
        "--prefix-caching-hash-algo",
        "--lora-modules",
        "--max-loras",
        "--failure-rate",
        "--failure-kinds",
        "--startup-delay",
        "--enable-prompt-tokens-details",
        "--legacy-gpu-cache-usage-metric",
    }
)


def sim_num_blocks(config: EngineConfig, block_size: int) -> int | None:
    """``--num-gpu-blocks`` matching vLLM's ``--kv-cache-memory-bytes`` for this model."""
    if config.num_gpu_blocks is not None:
        return config.num_gpu_blocks
    per_token = config.model.kv_bytes_per_token
    if config.kv_cache_bytes is None or not per_token:
        return None
    return max(1, config.kv_cache_bytes // per_token // block_size)


def plan_sim(config: EngineConfig, num_replicas: int) -> LaunchPlan:
    """A plan for ``num_replicas`` simulated replicas on this machine."""
    if num_replicas < 1:
        raise EngineError("at least one replica is needed")
    model = config.model
    block_size = config.block_size or CPU_BLOCK_SIZE
    num_blocks = sim_num_blocks(config, block_size)
    notes: list[str] = []
    extra: list[str] = []
    dropped: list[str] = []
    tokens = list(config.extra_args)
    i = 0
    while i < len(tokens):  # keep the flags the simulator knows, with their values
        token = tokens[i]
        j = i + 1
        while j < len(tokens) and not tokens[j].startswith("--"):
            j += 1
        (extra if token.split("=", 1)[0] in SIM_FLAGS else dropped).extend(tokens[i:j])
        i = j
    if dropped:
        notes.append(f"ignored by the simulator: {' '.join(dropped)}")

    used: set[int] = set()
    replicas: list[ReplicaSpec] = []
    for idx in range(num_replicas):
        port = config.base_port + idx if config.base_port else free_port(config.host, used)
        used.add(port)
        argv = [
            sys.executable,
            "-m",
            "kvgate",
            "sim",
            "--host",
            config.host,
            "--port",
            str(port),
            "--model",
            model.name,
            "--served-model-name",
            model.name,
            "--block-size",
            str(block_size),
            "--prefix-caching-hash-algo",
            config.prefix_caching_hash_algo,
            "--seed",
            str(idx),
        ]
        if model.tokenizer is not None:
            argv += ["--tokenizer", str(model.tokenizer)]
        if config.sim_profile:
            argv += ["--profile", config.sim_profile]
        if num_blocks is not None:
            argv += ["--num-gpu-blocks", str(num_blocks)]
        if config.max_model_len is not None:
            argv += ["--max-model-len", str(config.max_model_len)]
        if config.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(config.max_num_seqs)]
        if config.max_num_batched_tokens is not None:
            argv += ["--max-num-batched-tokens", str(config.max_num_batched_tokens)]
        topic = endpoint = connect = replay = None
        if config.kv_events:
            topic = event_topic(config.host, port, model.name)
            host = "127.0.0.1" if config.host in ("0.0.0.0", "*", "") else config.host
            if config.kv_events_collector:
                endpoint = config.kv_events_collector
            else:
                pub_port = free_port(config.host, used)
                used.add(pub_port)
                endpoint = f"tcp://*:{pub_port}"
                connect = f"tcp://{host}:{pub_port}"
            replay_port = free_port(config.host, used)
            used.add(replay_port)
            replay = f"tcp://{host}:{replay_port}"
            argv += ["--kv-events-config", kv_events_config(endpoint, topic, replay)]
        argv, merge_notes = merge_args(argv, extra, protected=PROTECTED_FLAGS)
        if idx == 0:
            notes.extend(merge_notes)
        env = dict(config.extra_env)
        if config.python_hash_seed is not None:
            env["PYTHONHASHSEED"] = config.python_hash_seed
        replicas.append(
            ReplicaSpec(
                index=idx,
                name=f"replica-{idx}",
                engine="sim",
                argv=tuple(argv),
                env=env,
                unset_env=() if config.python_hash_seed is not None else ("PYTHONHASHSEED",),
                host=config.host,
                port=port,
                served_model_name=model.name,
                log_path=config.run_dir / "logs" / f"replica-{idx}.log",
                kv_events_endpoint=endpoint,
                kv_events_connect=connect,
                kv_events_topic=topic,
                kv_events_replay_endpoint=replay,
                block_size=int(flag_value(argv, "--block-size") or block_size),
                prefix_caching_hash_algo=flag_value(argv, "--prefix-caching-hash-algo")
                or config.prefix_caching_hash_algo,
            )
        )
    return LaunchPlan(
        engine="sim",
        model=model,
        run_dir=config.run_dir,
        replicas=tuple(replicas),
        ready_timeout_s=30.0,
        notes=tuple(notes),
    )
