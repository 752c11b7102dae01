"""``kvgate sidecar``: llm-d's routing sidecar (P/D) beside a decode model server."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

#: llm-d's --kv-connector values; kvgate runs nixlv2's two-leg protocol only.
CONNECTORS = ("nixlv2",)
#: llm-d's --ec-connector values ("" skips the encode stage); see kvgate.sidecar.encode.
EC_CONNECTORS = ("", "ec-example", "ec-nixl")


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sidecar",
        help="P/D routing sidecar beside a decode server (llm-d's pd-sidecar flags)",
        description=(
            "Runs the prefill leg named by x-prefiller-host-port, then the decode leg to "
            "the local model server. See docs/pd.md."
        ),
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the port the sidecar listens on")
    p.add_argument(
        "--model-server-port",
        "--vllm-port",
        dest="model_server_port",
        type=int,
        default=8001,
        help="the decode model server's port (--vllm-port: llm-d's deprecated name)",
    )
    p.add_argument("--model-server-host", default="127.0.0.1")
    p.add_argument("--kv-connector", default="nixlv2", help="only nixlv2 (vLLM's NixlConnector)")
    p.add_argument(
        "--ec-connector",
        default="",
        help="E/P/D: ec-example (encoders write a shared store) or ec-nixl (their "
        "ec_transfer_params go on to prefill); empty (default) skips the encode stage",
    )
    p.add_argument(
        "--secure-proxy",
        type=_bool,
        default=False,
        metavar="BOOL",
        help="llm-d's TLS listener; kvgate serves plain HTTP, so only false is accepted",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="own /metrics port (0 = none)")
    p.add_argument(
        "--prefill-timeout",
        type=float,
        default=60.0,
        help="seconds before a prefill leg is abandoned for decode-only, or an encode "
        "request left to the prefill server (default 60)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging

    from kvgate.errors import ConfigError, Problem
    from kvgate.sidecar.server import SidecarOptions, serve

    where = "kvgate sidecar"
    if args.kv_connector not in CONNECTORS:
        raise ConfigError(
            [Problem(where, "--kv-connector", f"expected nixlv2, got {args.kv_connector!r}")]
        )
    if args.ec_connector not in EC_CONNECTORS:
        raise ConfigError(
            [
                Problem(
                    where,
                    "--ec-connector",
                    f"expected ec-example or ec-nixl, got {args.ec_connector!r}",
                )
            ]
        )
    if args.secure_proxy:
        raise ConfigError(
            [Problem(where, "--secure-proxy", "kvgate's sidecar serves plain HTTP; pass false")]
        )
    if args.prefill_timeout <= 0:
        raise ConfigError([Problem(where, "--prefill-timeout", "expected seconds > 0")])
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    opts = SidecarOptions(
        host=args.host,
        port=args.port,
        model_server_host=args.model_server_host,
        model_server_port=args.model_server_port,
        metrics_port=args.metrics_port,
        prefill_timeout_s=args.prefill_timeout,
        ec_connector=args.ec_connector,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(opts))
    return 0
