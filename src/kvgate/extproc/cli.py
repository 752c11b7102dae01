"""``kvgate epp``: the Envoy ext_proc endpoint picker, flag-compatible with GIE's EPP.

The flags a KServe LLMInferenceService passes to its scheduler container are accepted as
written (``--pool-group``, ``--pool-name``, ``--pool-namespace``, ``--zap-encoder json``,
``--grpc-port 9002``, ``--grpc-health-port 9003``, ``--secure-serving``,
``--model-server-metrics-scheme https``, ``--config-text``), with Go's ``--flag=value`` and
duration (``50ms``) forms. Heavy imports happen inside :func:`run_epp`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration (``50ms``, ``1m30s``) or plain seconds -> seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"expected a duration like 50ms or 2s, got {text!r}")
    return total


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "epp",
        help="Envoy ext_proc endpoint picker (drop-in for llm-d / GIE's EPP)",
        description="Serve envoy.service.ext_proc.v3.ExternalProcessor with kvgate's scheduler.",
    )
    g = p.add_argument_group("serving")
    g.add_argument("--grpc-port", type=int, default=9002, help="ext_proc gRPC port (9002)")
    g.add_argument("--grpc-health-port", type=int, default=9003, help="gRPC health port (9003)")
    g.add_argument("--metrics-port", type=int, default=9090, help="Prometheus port (9090)")
    g.add_argument("--host", default="0.0.0.0", help="address to bind (0.0.0.0)")
    g.add_argument(
        "--secure-serving",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        help="TLS on the ext_proc port with a self-signed certificate generated at start "
        "(default: on with --pool-name, as GIE; off with static endpoints)",
    )
    g.add_argument("--cert-path", default=None, help="folder with tls.crt and tls.key to use")
    g.add_argument(
        "--request-body-mode",
        choices=["FULL_DUPLEX_STREAMED", "BUFFERED"],
        default="FULL_DUPLEX_STREAMED",
        help="body mode assumed when Envoy does not announce it (Envoy >= 1.33 does)",
    )
    g.add_argument(
        "--grpc-server",
        choices=["h2", "grpcio"],
        default="h2",
        help="what serves ext_proc: 'h2', HTTP/2 on the asyncio loop (the default: about half "
        "the CPU per message), or 'grpcio', grpc.aio",
    )
    c = p.add_argument_group("scheduling")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--config-text", default=None, help="EndpointPickerConfig YAML/JSON text")
    src.add_argument("--config-file", default=None, help="EndpointPickerConfig file")
    src.add_argument("--policy", default=None, help="a built-in policy name (llm-d-default)")
    c.add_argument("--seed", type=int, default=0, help="random seed for tie-breaks (0)")
    d = p.add_argument_group("endpoints")
    d.add_argument("--pool-name", default=None, help="InferencePool to watch (Kubernetes)")
    d.add_argument("--pool-namespace", default="default", help="namespace of the pool")
    d.add_argument(
        "--pool-group",
        default="inference.networking.k8s.io",
        help="API group of the pool: inference.networking.k8s.io (v1) or "
        "inference.networking.x-k8s.io (v1alpha2)",
    )
    d.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster)")
    d.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a model server (repeatable), instead of Kubernetes discovery",
    )
    d.add_argument("--endpoints-file", default=None, help="YAML/JSON list of endpoints, watched")
    m = p.add_argument_group("model-server metrics (GIE flag names)")
    m.add_argument("--refresh-metrics-interval", type=parse_duration, default=0.05)
    m.add_argument("--metrics-staleness-threshold", type=parse_duration, default=2.0)
    m.add_argument("--refresh-prometheus-metrics-interval", type=parse_duration, default=5.0)
    m.add_argument("--total-queued-requests-metric", default=None)
    m.add_argument("--total-running-requests-metric", default=None)
    m.add_argument("--kv-cache-usage-percentage-metric", default=None)
    m.add_argument("--lora-info-metric", default=None)
    m.add_argument("--cache-info-metric", default=None)
    m.add_argument("--model-server-metrics-scheme", choices=["http", "https"], default=None)
    m.add_argument(
        "--model-server-metrics-https-insecure-skip-verify",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
    )
    lg = p.add_argument_group("logging (zap-compatible)")
    lg.add_argument("--zap-encoder", choices=["json", "console"], default="console")
    lg.add_argument("--zap-log-level", default="info")
    lg.add_argument("--v", "-v", type=int, default=0, help="verbosity (GIE: 1-5)")
    p.set_defaults(func=run_epp)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, with zap's key names (ts, level, logger, msg)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.v >= 4 or args.zap_log_level == "debug" else logging.INFO
    if args.zap_log_level in ("error", "warn", "warning"):
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    if args.zap_encoder == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_epp(args: argparse.Namespace) -> int:
    from kvgate.endpoints.scrape import MetricNames
    from kvgate.endpoints.static import EndpointURLError, spec_from_url
    from kvgate.errors import KvgateError
    from kvgate.extproc.app import EppOptions, run

    _setup_logging(args)
    if args.pool_name and (args.endpoint or args.endpoints_file):
        raise KvgateError("give either --pool-name or --endpoint/--endpoints-file, not both")
    if not args.pool_name and not (args.endpoint or args.endpoints_file):
        raise KvgateError(
            "no endpoints: give --pool-name, --endpoint HOST:PORT or --endpoints-file"
        )
    try:
        specs = [spec_from_url(e) for e in args.endpoint]
        names = MetricNames.from_flags(
            queued=args.total_queued_requests_metric,
            running=args.total_running_requests_metric,
            kv_usage=args.kv_cache_usage_percentage_metric,
            lora_info=args.lora_info_metric,
            cache_info=args.cache_info_metric,
        )
    except (EndpointURLError, ValueError) as exc:
        raise KvgateError(str(exc)) from exc
    secure = args.secure_serving
    if secure is None:
        secure = bool(args.pool_name)
    opts = EppOptions(
        grpc_host=args.host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        secure_serving=secure,
        cert_path=args.cert_path,
        config_text=args.config_text,
        config_file=args.config_file,
        policy=args.policy,
        endpoints=specs,
        endpoints_file=args.endpoints_file,
        pool_name=args.pool_name,
        pool_namespace=args.pool_namespace,
        pool_group=args.pool_group,
        kubeconfig=args.kubeconfig,
        refresh_metrics_interval_s=args.refresh_metrics_interval,
        metrics_staleness_s=args.metrics_staleness_threshold,
        metric_names=names,
        model_server_metrics_scheme=args.model_server_metrics_scheme,
        model_server_metrics_verify_tls=not args.model_server_metrics_https_insecure_skip_verify,
        request_body_mode=args.request_body_mode,
        grpc_server=args.grpc_server,
        seed=args.seed,
    )
    return run(opts)
