"""What every engine launcher produces: a plan of model-server processes, one per replica.

``kvgate up`` and ``kvgate bench compare --engine vllm`` describe a cluster once with
:class:`EngineConfig`, ask :func:`kvgate.engines.plan_launch` for a :class:`LaunchPlan`, and
hand the plan to :class:`kvgate.engines.supervisor.Supervisor`, which starts the processes,
shows start-up progress, waits for readiness with a deadline and stops everything cleanly.

A plan is pure data (argv, environment, ports, KV-event endpoints, log paths), so it can be
printed (``kvgate engine plan``), tested without starting anything, and started again after
a crash with the same ports.

Two engines produce plans:

* ``sim``  -> ``python -m kvgate sim ...`` (:mod:`kvgate.engines.sim`), instant, any machine.
* ``vllm`` -> ``<engine python> -m vllm.entrypoints.openai.api_server ...``
  (:mod:`kvgate.engines.vllm`): the CPU build from ``make vllm`` on CPU hosts, pinned one
  replica per core; the user's own vLLM on GPU hosts, one GPU per replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EngineKind = Literal["vllm", "sim"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("vllm", "sim")

#: Block size real vLLM accepts on CPU (its CPU attention needs a multiple of 32) and the
#: one kvgate uses for the simulator when it stands in for CPU vLLM.
CPU_BLOCK_SIZE = 32
#: vLLM's default block size on GPUs.
GPU_BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model resolved to something an engine can load (see :mod:`kvgate.engines.model`)."""

    #: What the user asked for: ``hf://org/name``, ``org/name``, a folder, or a built-in name.
    uri: str
    #: The name replicas serve it under (``/v1/models``, the ``model`` field of requests).
    name: str
    #: A local Hugging Face folder (config.json, weights, tokenizer); None when only the
    #: simulator can serve it (nothing on disk).
    path: Path | None
    #: A folder or tokenizer.json for kvgate's tokenizer; None means the built-in SmolLM2 one.
    tokenizer: Path | None
    #: ``max_position_embeddings`` from config.json, when known.
    max_position_embeddings: int | None = None
    #: KV-cache bytes per token in bf16 (2 x layers x kv_heads x head_dim x 2), when known;
    #: lets a simulator hold as many blocks as a vLLM replica given the same cache bytes.
    kv_bytes_per_token: int | None = None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One cluster of identical replicas, engine-independent where possible.

    Fields an engine does not use are ignored by it (e.g. ``kv_cache_bytes`` by the sim,
    ``num_gpu_blocks`` and ``sim_profile`` by vLLM).
    """

    engine: EngineKind
    model: ModelSource
    #: Where logs, the vLLM cache root and scratch files go; created by the supervisor.
    run_dir: Path
    host: str = "127.0.0.1"
    #: First HTTP port; replica i listens on ``base_port + i``. None: free ports are picked.
    base_port: int | None = None
    #: None: the engine's choice (32 for vLLM on CPU, 16 on GPU, 32 for the sim by default).
    block_size: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    #: vLLM: ``--kv-cache-memory-bytes``. None: 1 GiB on CPU, vLLM's own sizing on GPU.
    kv_cache_bytes: int | None = None
    #: Sim: ``--num-gpu-blocks``. None: derived from ``kv_cache_bytes`` when given for the
    #: SmolLM2 model shape (so a sim "configured like" a vLLM replica holds as many blocks).
    num_gpu_blocks: int | None = None
    prefix_caching_hash_algo: str = "sha256"
    #: Publish KV events (ZMQ PUB per replica plus a replay ROUTER).
    kv_events: bool = True
    #: Where every replica's PUB connects (llm-d's one-collector pattern; the subscriber binds
    #: it). None: each replica binds its own PUB port and subscribers connect to it.
    kv_events_collector: str | None = None
    #: Extra engine arguments, e.g. VLLM_ADDITIONAL_ARGS from an LLMInferenceService template
    #: (already split; kvgate's own flags are replaced by the same flags given here).
    extra_args: tuple[str, ...] = ()
    #: Extra environment for every replica (e.g. the template's container env).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Sim latency profile (``qwen3-0.6b-h100``, ``smollm2-cpu`` ...); None: the sim's default.
    sim_profile: str | None = None
    #: The Python that runs vLLM (``--vllm-python`` / ``KVGATE_VLLM_PYTHON``); None: the
    #: engine venv from ``make vllm`` on CPU, ``vllm`` from PATH on GPU hosts.
    vllm_python: Path | None = None
    #: "auto" (GPU when nvidia-smi or CUDA_VISIBLE_DEVICES says so), "cpu" or "gpu".
    device: Literal["auto", "cpu", "gpu"] = "auto"
    #: CPU cores to spread replicas over; None: the cores this process may run on.
    cpus: tuple[int, ...] | None = None
    #: PYTHONHASHSEED for the replicas (changes vLLM's NONE_HASH and so every block hash).
    #: None: left unset (removed from the environment), so hashes use "vllm-none-hash".
    python_hash_seed: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Everything needed to start, reach and observe one replica."""

    index: int
    #: ``replica-<i>``; used for log names and progress lines.
    name: str
    engine: EngineKind
    #: The full command, wrappers (taskset) included.
    argv: tuple[str, ...]
    #: Variables set on top of the parent's environment.
    env: Mapping[str, str]
    #: Variables removed from the parent's environment (e.g. VLLM_CPU_KVCACHE_SPACE, which
    #: would override --kv-cache-memory-bytes).
    unset_env: tuple[str, ...]
    host: str
    port: int
    served_model_name: str
    log_path: Path
    #: What the engine was told (``--kv-events-config`` ``endpoint``): ``tcp://*:P`` binds.
    kv_events_endpoint: str | None
    #: Where a SUB socket connects to hear this replica (None when replicas connect out to a
    #: collector, see :attr:`EngineConfig.kv_events_collector`).
    kv_events_connect: str | None
    #: The topic this replica publishes under: ``kv@<host:port>@<model>``.
    kv_events_topic: str | None
    #: The replay ROUTER (DEALER sends ``[b"", start_seq u64 BE]``).
    kv_events_replay_endpoint: str | None
    block_size: int
    prefix_caching_hash_algo: str
    #: CPU cores the replica is pinned to (None: unpinned); GPUs it sees (None: CPU replica).
    cpus: tuple[int, ...] | None = None
    gpus: tuple[str, ...] | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (append ``/v1`` for OpenAI clients)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ready_url(self) -> str:
        """Polled until it answers 200 (vLLM and the sim both serve /health)."""
        return f"{self.base_url}/health"


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """The replicas of one cluster, in index order."""

    engine: EngineKind
    model: ModelSource
    run_dir: Path
    replicas: tuple[ReplicaSpec, ...]
    #: A generous readiness deadline for this plan (vLLM on CPU needs ~20-40 s per replica,
    #: more when replicas share cores; the sim well under a second).
    ready_timeout_s: float
    #: Human-readable notes decided while planning (clamped flags, ignored arguments).
    notes: tuple[str, ...] = ()

    @property
    def endpoints(self) -> list[str]:
        """Base URLs of the replicas (for ``kvgate serve --endpoint``)."""
        return [r.base_url for r in self.replicas]
