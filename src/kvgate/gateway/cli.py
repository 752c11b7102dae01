"""``kvgate serve``: the OpenAI-compatible gateway (light to import; the app loads in the func)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` (and reused by ``up`` for its gateway options)."""
    g = p.add_argument_group("scheduler")
    g.add_argument(
        "--config",
        type=Path,
        default=None,
        help="EndpointPickerConfig or LLMInferenceService (YAML/JSON)",
    )
    g.add_argument("--config-text", default=None, help="EndpointPickerConfig YAML given inline")
    g.add_argument(
        "--policy",
        default=None,
        help="a built-in policy (random, round-robin, least-queue, llm-d-default, precise, ...)",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH|MODEL",
        help="the tokenizer plugins use unless their tokenizersPoolConfig names one: a "
        "tokenizer.json, a model folder, or a model name (org/name) from the local Hugging Face "
        "cache or the Hub (default: built-in SmolLM2, with a warning)",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        help="never download tokenizers from the Hugging Face Hub (as HF_HUB_OFFLINE=1)",
    )
    g.add_argument("--seed", type=int, default=None, help="seed the scheduler's random tie-breaks")
    g.add_argument(
        "--objectives",
        type=Path,
        default=None,
        metavar="FILE",
        help="InferenceObjective documents (YAML): priorities for flow control, by the "
        "x-gateway-inference-objective header",
    )
    e = p.add_argument_group("endpoints")
    e.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="model server root, e.g. http://127.0.0.1:8001 (repeatable)",
    )
    e.add_argument(
        "--endpoints-file",
        type=Path,
        default=None,
        help="YAML/JSON list of endpoints, watched for changes",
    )
    e.add_argument(
        "--refresh-metrics-interval",
        default="50ms",
        help="scrape period (Go duration, default 50ms)",
    )
    e.add_argument(
        "--metrics-staleness-threshold",
        default="2s",
        help="an endpoint whose last good scrape is older leaves rotation",
    )
    e.add_argument(
        "--total-queued-requests-metric", default=None, help="default vllm:num_requests_waiting"
    )
    e.add_argument(
        "--total-running-requests-metric", default=None, help="default vllm:num_requests_running"
    )
    e.add_argument(
        "--kv-cache-usage-percentage-metric",
        default=None,
        help="default vllm:kv_cache_usage_perc (falls back to vllm:gpu_cache_usage_perc)",
    )
    e.add_argument(
        "--lora-info-metric", default=None, help="default vllm:lora_requests_info ('' disables)"
    )
    e.add_argument(
        "--cache-info-metric", default=None, help="default vllm:cache_config_info ('' disables)"
    )
    e.add_argument("--model-server-metrics-scheme", choices=("http", "https"), default=None)
    e.add_argument("--model-server-metrics-https-insecure-skip-verify", action="store_true")
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require Authorization: Bearer KEY (repeatable; also KVGATE_API_KEYS)",
    )
    s.add_argument("--api-key-file", type=Path, default=None, help="file with one API key per line")
    s.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="other endpoints tried after a connect error or 5xx (default 2)",
    )
    s.add_argument(
        "--request-timeout", default="600s", help="per-attempt upstream timeout (default 600s)"
    )
    s.add_argument("--connect-timeout", default="5s")
    s.add_argument(
        "--header-timeout",
        default="10s",
        help="close a connection that has not sent its first request head by then (default 10s)",
    )
    s.add_argument(
        "--drain-timeout",
        default="30s",
        help="on SIGTERM/SIGINT: stop accepting, let requests in flight finish for this long, "
        "then cancel them (default 30s)",
    )
    s.add_argument(
        "--max-body-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="413 beyond this (default 16 MiB)",
    )
    s.add_argument(
        "--service-path",
        default=None,
        metavar="NAMESPACE/NAME",
        help="restrict /<ns>/<name>/v1 to this service",
    )
    s.add_argument("--log-format", choices=("json", "text"), default="text")
    s.add_argument("--log-level", default="info")
    s.add_argument("--no-request-log", action="store_true", help="no per-request log line")
    from kvgate.endpoints import outlier_cli

    outlier_cli.add_arguments(p)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway in front of model servers",
        description=(
            "Serve /v1/chat/completions, /v1/completions (also under /<namespace>/<name>/v1), "
            "/v1/models, /health, /ready and /metrics, routing each request with llm-d's "
            "scheduler over the given endpoints. Ready when GET /ready is 200."
        ),
    )
    add_serve_args(p)
    add_tracing_arg(p)
    p.set_defaults(func=_serve)


def add_tracing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry trace of each request, configured by the OTEL_* variables "
        "(exporter, endpoint, sampler: docs/observability.md); off by default",
    )


def traced(run: Callable[[], int], enabled: bool) -> int:
    """``run()`` with OpenTelemetry tracing set up around it when ``enabled`` (serve, up)."""
    if not enabled:
        return run()
    from kvgate.requestcontrol import tracing

    tracing.setup(tracing.SERVICE_GATEWAY)
    try:
        return run()
    finally:
        tracing.shutdown()  # export the spans still buffered


def _serve(args: argparse.Namespace) -> int:
    from kvgate.gateway.app import serve_from_args

    return traced(lambda: serve_from_args(args), args.tracing)
