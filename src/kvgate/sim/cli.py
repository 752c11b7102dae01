"""``kvgate sim``: one simulated vLLM replica (flags as vLLM's where vLLM has them)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="run a simulated vLLM model server (OpenAI API, /metrics, KV events)",
        description=(
            "A vLLM-compatible simulated model server: continuous batching over a paged, "
            "prefix-cached KV cache, timed by a latency model fitted on real GPUs. "
            "See docs/sim.md."
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="sim-model", help="model name (also the default served name)")
    p.add_argument("--served-model-name", nargs="+", default=None, help="names the API accepts")
    p.add_argument(
        "--profile",
        default=None,
        help="built-in profile name or a profile .json (default qwen3-0.6b-h100)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the modelled clock this many times faster (default 1 = real time)",
    )
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument(
        "--num-gpu-blocks",
        "--num-gpu-blocks-override",
        dest="num_gpu_blocks",
        type=int,
        default=None,
    )
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json or a model folder (default: built-in SmolLM2)",
    )
    p.add_argument("--mode", choices=("random", "echo"), default="random")
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens per streamed chunk, as vLLM's (first and last chunks go at once)",
    )
    p.add_argument(
        "--emit-lead-max-ms",
        type=float,
        default=5.0,
        help="complete steps up to this far ahead of plan, by the measured delay in writing "
        "their tokens out, so clients see the model's timing (default 5; 0 = never)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv-events-config", default=None, help="vLLM's --kv-events-config JSON")
    p.add_argument(
        "--kv-transfer-config",
        default=None,
        help='vLLM\'s --kv-transfer-config JSON for P/D, e.g. {"kv_connector":"NixlConnector",'
        '"kv_role":"kv_both"} (see kvgate.sim.kvtransfer for the simulated link)',
    )
    p.add_argument(
        "--ec-transfer-config",
        default=None,
        help='vLLM\'s --ec-transfer-config JSON for E/P/D, e.g. {"ec_connector":'
        '"ECExampleConnector","ec_role":"ec_producer","ec_connector_extra_config":'
        '{"shared_storage_path":"/tmp/ec"}} (see kvgate.sim.encoder)',
    )
    p.add_argument(
        "--mm-encode-ms",
        type=float,
        default=20.0,
        help="model milliseconds to encode one image, video or audio part (default 20)",
    )
    p.add_argument(
        "--mm-encoder-cache-items",
        type=int,
        default=256,
        help="encoded multimodal parts the replica keeps for reuse (default 256)",
    )
    p.add_argument(
        "--kv-events-endpoint", default=None, help="ZMQ endpoint of the PUB socket (enables events)"
    )
    p.add_argument("--kv-events-topic", default=None, help="default kv@<host:port>@<model>")
    p.add_argument("--kv-events-replay-endpoint", default=None)
    p.add_argument("--kv-events-format", choices=("map", "array"), default="map")
    p.add_argument(
        "--kv-events-fault",
        default="",
        help="faults on the live event stream, e.g. drop:0.2,dup:0.1,reorder:0.1 (per-batch "
        "probabilities; the replay buffer keeps every batch)",
    )
    p.add_argument(
        "--kv-offload-blocks", type=int, default=0, help="CPU tier size in blocks (0 = off)"
    )
    p.add_argument(
        "--prefix-caching-hash-algo", choices=("sha256", "sha256_cbor"), default="sha256"
    )
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--enable-lora",
        action="store_true",
        help="as vLLM: serve LoRA adapters and export vllm:lora_requests_info "
        "(implied by --lora-modules)",
    )
    p.add_argument("--lora-modules", nargs="+", default=[], help="name=path (or vLLM's JSON form)")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument(
        "--failure-rate", type=float, default=0.0, help="fraction of requests that fail (0..1)"
    )
    p.add_argument("--failure-kinds", default="500", help="comma list of 429,500,503,drop,hang")
    p.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds before the server listens"
    )
    p.add_argument(
        "--enable-prompt-tokens-details", action="store_true", help="accepted; always on"
    )
    p.add_argument(
        "--legacy-gpu-cache-usage-metric",
        action="store_true",
        help="also export vllm:gpu_cache_usage_perc",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on SIGTERM",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a request (head and body) may take to arrive from its first byte, and a "
        "new connection to send its first request (kvgate's bound; vLLM has none)",
    )
    tls = p.add_argument_group("HTTPS, as vLLM (kvgate.sim.tls)")
    tls.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate")
    tls.add_argument("--ssl-keyfile", default=None, help="its private key")
    tls.add_argument("--ssl-ca-certs", default=None, help="CA certificates for client certs")
    tls.add_argument(
        "--ssl-cert-reqs", type=int, default=0, help="0 none, 1 optional, 2 required (ssl.CERT_*)"
    )
    tls.add_argument(
        "--enable-ssl-refresh",
        action="store_true",
        help="reload the certificate files when they change (new connections get them)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    from kvgate.errors import ConfigError, Problem
    from kvgate.sim.config import settings_from_args
    from kvgate.sim.server import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        raise ConfigError([Problem("kvgate sim", "", str(exc))]) from exc
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"error: kvgate sim: {exc}", file=sys.stderr)
        return 1
    return 0
