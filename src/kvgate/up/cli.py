"""``kvgate up [FILE]``: an LLMInferenceService on this machine (light to import)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "up",
        help="run an LLMInferenceService here: model-server replicas plus the gateway",
        description=(
            "Read an LLMInferenceService (default: the built-in SmolLM2-135M demo), start "
            "spec.replicas model servers (real vLLM or the simulator), wait until they are "
            "ready, then serve the OpenAI API through kvgate's gateway with the scheduler "
            "configuration from the file. Ctrl-C or SIGTERM stops everything."
        ),
    )
    p.add_argument("file", nargs="?", type=Path, default=None, help="LLMInferenceService YAML/JSON")
    p.add_argument(
        "--example",
        action="store_true",
        help="run the course's LLMInferenceService shipped in the package (hf://Qwen/Qwen3-0.6B, "
        "fetched from the Hub unless --offline) instead of FILE",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download: hf:// models and tokenizers must already be in the local Hugging "
        "Face cache (as HF_HUB_OFFLINE=1)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH|MODEL",
        help="the tokenizer for the replicas' simulator and the router (default: the model's "
        "own; a tokenizer.json, a model folder, or a model name from the HF cache or the Hub)",
    )
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm", help="default vllm")
    p.add_argument("--replicas", type=int, default=None, help="override spec.replicas")
    p.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    p.add_argument(
        "--run-dir", type=Path, default=None, help="logs and scratch (default a temp folder)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="use this key when auth is on (repeatable)",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="text")
    p.add_argument("--no-request-log", action="store_true", help="no per-request log line")
    p.add_argument(
        "--objectives",
        type=Path,
        default=None,
        metavar="FILE",
        help="InferenceObjective documents (YAML): flow-control priorities by objective name",
    )
    p.add_argument(
        "--drain-timeout",
        default="30s",
        help="on Ctrl-C/SIGTERM: how long requests in flight may finish (default 30s)",
    )
    p.add_argument("--ready-timeout", type=float, default=None, help="seconds to wait for replicas")
    p.add_argument("--vllm-python", type=Path, default=None, help="the Python that runs vLLM")
    from kvgate.gateway.cli import add_tracing_arg

    add_tracing_arg(p)
    p.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    import os

    from kvgate.gateway.cli import traced
    from kvgate.up.run import spec_tracing_env, up_from_args

    env = spec_tracing_env(args)  # spec.tracing turns tracing on, as --tracing with OTEL_*
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return traced(lambda: up_from_args(args), args.tracing or bool(env))
