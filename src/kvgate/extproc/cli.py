"""``kvgate epp``: the Envoy ext_proc endpoint picker, flag-compatible with GIE's EPP.

The flags a KServe LLMInferenceService passes to its scheduler container are accepted as
written (``--pool-group``, ``--pool-name``, ``--pool-namespace``, ``--zap-encoder json``,
``--grpc-port 9002``, ``--grpc-health-port 9003``, ``--secure-serving``,
``--model-server-metrics-scheme https``, ``--config-text``), with Go's ``--flag=value`` and
duration (``50ms``) forms. Heavy imports happen inside :func:`run_epp`.

Every flag of GIE's EPP (``pkg/epp/server/options.go`` and controller-runtime's ``--zap-*``
in llm-d/llm-d-inference-scheduler) is accepted with GIE's default, and either acts or stops
start-up with one line naming it (:func:`unsupported_flags`): a value kvgate cannot honour is
never ignored. GIE defaults that kvgate does not implement (``--enable-pprof``,
``--metrics-endpoint-auth``, both on in GIE) take effect as off, and stating them on is the
error; docs/kubernetes.md lists them. ``--tracing`` (on in GIE) is off unless stated:
``--tracing=true`` exports OpenTelemetry traces (:mod:`kvgate.requestcontrol.tracing`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from typing import Any

from kvgate.durations import duration_arg


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_ports(text: str) -> list[int]:
    """GIE's ``--endpoint-target-ports``: ``3000,3001`` (pflag IntSlice)."""
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ports like 8000,8001, got {text!r}") from None
    if any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {text!r}")
    return ports


def parse_stream_limit(text: str) -> int:
    """``--max-concurrent-streams``: an HTTP/2 stream count, 1..2^31-1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..2147483647, got {text!r}")
    return value


def _bool_flag(group: Any, name: str, default: bool | None, help_text: str) -> None:
    """A Go-style boolean: ``--x``, ``--x=true``, ``--x false``."""
    group.add_argument(
        name, type=parse_bool, nargs="?", const=True, default=default, help=help_text
    )


#: (flag, attribute, value kvgate cannot honour -> why). ``None`` matches any non-default.
_UNSUPPORTED: tuple[tuple[str, str, Any, str], ...] = (
    (
        "--endpoint-selector",
        "endpoint_selector",
        None,
        "discovery by pod selector without an InferencePool is not implemented; use "
        "--pool-name, --endpoint or --endpoints-file",
    ),
    (
        "--endpoint-target-ports",
        "endpoint_target_ports",
        None,
        "only used with --endpoint-selector, which kvgate does not implement",
    ),
    (
        "--enable-pprof",
        "enable_pprof",
        True,
        "pprof is Go's profiler; profile kvgate with py-spy; pass --enable-pprof=false",
    ),
    (
        "--enable-cert-reload",
        "enable_cert_reload",
        True,
        "kvgate reads --cert-path once at start; restart the pod to rotate certificates",
    ),
    (
        "--metrics-endpoint-auth",
        "metrics_endpoint_auth",
        True,
        "kvgate's /metrics has no TokenReview authentication; protect it with a "
        "NetworkPolicy and pass --metrics-endpoint-auth=false",
    ),
    (
        "--health-checking",
        "health_checking",
        True,
        "kvgate serves gRPC health on --grpc-health-port only, not on the ext_proc port",
    ),
)
_NON_DEFAULT = {"endpoint_selector": "", "endpoint_target_ports": []}


def unsupported_flags(args: argparse.Namespace) -> list[str]:
    """One line per GIE flag given a value kvgate cannot honour (empty: all act)."""
    out = []
    for flag, attr, bad, why in _UNSUPPORTED:
        value = getattr(args, attr, None)
        hit = value != _NON_DEFAULT[attr] if bad is None else value is bad
        if hit:
            out.append(f"kvgate epp: {flag}={_show(value)}: not supported: {why}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def pool_namespace(args: argparse.Namespace) -> str:
    """GIE's rule: ``--pool-namespace``, else ``$NAMESPACE``, else ``default``."""
    return args.pool_namespace or os.environ.get("NAMESPACE") or "default"


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
    g.add_argument(
        "--max-concurrent-streams",
        type=parse_stream_limit,
        default=1024,
        help="ext_proc calls one HTTP/2 connection may have open at once, advertised as "
        "SETTINGS_MAX_CONCURRENT_STREAMS; one more is refused with REFUSED_STREAM (1024)",
    )
    g.add_argument(
        "--drain-timeout",
        type=duration_arg,
        default=30.0,
        help="on SIGTERM/SIGINT: refuse new ext_proc streams, let those in flight end for this "
        "long, then reset them (default 30s)",
    )
    c = p.add_argument_group("scheduling")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--config-text", default=None, help="EndpointPickerConfig YAML/JSON text")
    src.add_argument("--config-file", default=None, help="EndpointPickerConfig file")
    src.add_argument("--policy", default=None, help="a built-in policy name (llm-d-default)")
    c.add_argument("--seed", type=int, default=0, help="random seed for tie-breaks (0)")
    c.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH|MODEL",
        help="the tokenizer plugins use unless their tokenizersPoolConfig names one: a "
        "tokenizer.json, a model folder, or a model name from the Hugging Face cache or the Hub",
    )
    c.add_argument(
        "--offline",
        action="store_true",
        help="never download tokenizers from the Hugging Face Hub (as HF_HUB_OFFLINE=1)",
    )
    c.add_argument(
        "--objectives",
        default=None,
        metavar="FILE",
        help="InferenceObjective documents (YAML): flow-control priorities by objective name "
        "(with --pool-name they are also watched from the API server)",
    )
    d = p.add_argument_group("endpoints")
    d.add_argument("--pool-name", default=None, help="InferencePool to watch (Kubernetes)")
    d.add_argument(
        "--pool-namespace",
        default="",
        help="namespace of the pool (default: $NAMESPACE, else 'default', as GIE)",
    )
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
    m.add_argument("--refresh-metrics-interval", type=duration_arg, default=0.05)
    m.add_argument("--metrics-staleness-threshold", type=duration_arg, default=2.0)
    m.add_argument("--refresh-prometheus-metrics-interval", type=duration_arg, default=5.0)
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
    m.add_argument(
        "--model-server-metrics-path", default="/metrics", help="path scraped on each endpoint"
    )
    m.add_argument(
        "--model-server-metrics-port",
        type=int,
        default=0,
        help="port scraped on each endpoint (0: its serving port)",
    )
    d.add_argument("--endpoint-selector", default="", help="GIE: pod selector (not supported)")
    d.add_argument("--endpoint-target-ports", type=parse_ports, default=[], help="(not supported)")
    _bool_flag(
        d,
        "--disable-endpoint-subset-filter",
        False,
        "ignore the gateway's x-gateway-destination-endpoint-subset hint",
    )
    gie = p.add_argument_group("GIE operations flags (false or absent only, see docs)")
    le = p.add_argument_group("leader election (docs/extproc.md)")
    _bool_flag(
        le,
        "--ha-enable-leader-election",
        False,
        "active-passive on a Lease: only its holder reports SERVING (needs --pool-name; GIE "
        "default false)",
    )
    le.add_argument(
        "--leader-election-lease-duration",
        type=duration_arg,
        default=None,
        help="kvgate-specific: how long an unrenewed Lease stays held (15s, as controller-runtime)",
    )
    le.add_argument(
        "--leader-election-renew-deadline",
        type=duration_arg,
        default=None,
        help="kvgate-specific: the leader gives up after failing to renew for this long (10s)",
    )
    le.add_argument(
        "--leader-election-retry-period",
        type=duration_arg,
        default=None,
        help="kvgate-specific: between acquire or renew attempts (2s)",
    )
    _bool_flag(
        g,
        "--tracing",
        False,
        "OpenTelemetry traces, configured by the OTEL_* variables as GIE's (GIE default "
        "true; kvgate: off unless given; docs/observability.md)",
    )
    _bool_flag(gie, "--enable-pprof", None, "GIE default true; kvgate: off")
    _bool_flag(gie, "--enable-cert-reload", False, "GIE default false")
    _bool_flag(gie, "--metrics-endpoint-auth", None, "GIE default true; kvgate: off")
    _bool_flag(gie, "--health-checking", False, "GIE default false")
    lg = p.add_argument_group("logging (controller-runtime's zap flags)")
    _bool_flag(lg, "--zap-devel", True, "development defaults: console encoder (GIE: true)")
    lg.add_argument("--zap-encoder", choices=["json", "console"], default=None)
    lg.add_argument(
        "--zap-log-level",
        type=parse_zap_level,
        default=None,
        help="debug, info, error, panic or an integer > 0 (more verbose)",
    )
    lg.add_argument(
        "--zap-stacktrace-level",
        choices=["info", "error", "panic"],
        default=None,
        help="records at this level or above carry their traceback (default: error; "
        "warn with --zap-devel)",
    )
    lg.add_argument(
        "--zap-time-encoding",
        choices=sorted(_TIME_ENCODINGS),
        default="epoch",
        help="how 'ts' is written (zap's default: epoch seconds)",
    )
    lg.add_argument("--v", "-v", type=int, default=0, help="verbosity (GIE: 1-5)")
    lg.add_argument("--no-request-log", action="store_true", help="no JSON line per routed request")
    from kvgate.endpoints import outlier_cli

    outlier_cli.add_arguments(p, retries=False)
    p.set_defaults(func=run_epp)


_ZAP_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
               "error": logging.ERROR, "dpanic": logging.CRITICAL, "panic": logging.CRITICAL,
               "fatal": logging.CRITICAL}  # fmt: skip


def parse_zap_level(text: str) -> int:
    """controller-runtime's ``--zap-log-level``: a name, or an integer > 0 (zap level -N)."""
    lowered = text.strip().lower()
    if lowered in _ZAP_LEVELS:
        return _ZAP_LEVELS[lowered]
    if lowered.isdigit() and int(lowered) > 0:
        return logging.DEBUG  # V(1) and above: Python logging has one debug level
    raise argparse.ArgumentTypeError(
        f"expected debug, info, error, panic or an integer > 0, got {text!r}"
    )


def _ts_iso(created: float, digits: int) -> str:
    stamp = datetime.datetime.fromtimestamp(created, datetime.UTC)
    text = stamp.isoformat(timespec="microseconds" if digits else "seconds")
    return text.replace("+00:00", "Z")


#: zap's time encoders (zapcore.TimeEncoder.UnmarshalText), record time -> JSON value.
_TIME_ENCODINGS: dict[str, Any] = {
    "epoch": lambda t: t,
    "millis": lambda t: t * 1e3,
    "nano": lambda t: int(t * 1e9),
    "iso8601": lambda t: (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
    ),
    "rfc3339": lambda t: _ts_iso(t, 0),
    "rfc3339nano": lambda t: _ts_iso(t, 9),
}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, with zap's key names (ts, level, logger, msg, stacktrace)."""

    def __init__(self, time_encoding: str, stacktrace_level: int) -> None:
        super().__init__()
        self.encode_time = _TIME_ENCODINGS[time_encoding]
        self.stacktrace_level = stacktrace_level

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.encode_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = repr(record.exc_info[1])
            if record.levelno >= self.stacktrace_level:
                entry["stacktrace"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _ConsoleFormatter(logging.Formatter):
    """zap's console layout; tracebacks only at or above the stacktrace level."""

    def __init__(self, stacktrace_level: int) -> None:
        super().__init__("%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s")
        self.stacktrace_level = stacktrace_level

    _level = logging.NOTSET  # the level of the record being formatted

    def formatException(self, ei: Any) -> str:
        return super().formatException(ei) if self._level >= self.stacktrace_level else ""

    def format(self, record: logging.LogRecord) -> str:
        self._level = record.levelno
        return super().format(record).rstrip("\n")


def _setup_logging(args: argparse.Namespace) -> None:
    # controller-runtime: --zap-devel picks the console encoder and warn stacktraces,
    # production json and error stacktraces; explicit --zap-* flags override. Without
    # --zap-log-level GIE derives the level from -v (its DEBUG verbosity is 4).
    devel = args.zap_devel
    level = args.zap_log_level or (logging.DEBUG if args.v >= 4 else logging.INFO)
    encoder = args.zap_encoder or ("console" if devel else "json")
    stack_name = args.zap_stacktrace_level or ("warn" if devel else "error")
    stack = _ZAP_LEVELS[stack_name]
    handler = logging.StreamHandler(sys.stderr)
    if encoder == "json":
        handler.setFormatter(_JsonFormatter(args.zap_time_encoding, stack))
    else:
        handler.setFormatter(_ConsoleFormatter(stack))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if encoder == "json":  # the request line, as `kvgate serve --log-format json` writes it
        from kvgate.requestcontrol.reqlog import use_json_request_log

        use_json_request_log(handler.stream)


def run_epp(args: argparse.Namespace) -> int:
    from kvgate.endpoints import outlier_cli
    from kvgate.endpoints.scrape import MetricNames
    from kvgate.endpoints.static import EndpointURLError, spec_from_url
    from kvgate.errors import KvgateError
    from kvgate.extproc.app import EppOptions, run

    problems = unsupported_flags(args)
    if problems:
        raise KvgateError(problems[0])
    _setup_logging(args)
    if args.pool_name and (args.endpoint or args.endpoints_file):
        raise KvgateError("give either --pool-name or --endpoint/--endpoints-file, not both")
    if not args.pool_name and not (args.endpoint or args.endpoints_file):
        raise KvgateError(
            "no endpoints: give --pool-name, --endpoint HOST:PORT or --endpoints-file"
        )
    lease = {
        "--leader-election-lease-duration": args.leader_election_lease_duration,
        "--leader-election-renew-deadline": args.leader_election_renew_deadline,
        "--leader-election-retry-period": args.leader_election_retry_period,
    }
    if not args.ha_enable_leader_election:
        given = [flag for flag, value in lease.items() if value is not None]
        if given:
            raise KvgateError(f"kvgate epp: {given[0]}: needs --ha-enable-leader-election")
    elif not args.pool_name:
        raise KvgateError(
            "kvgate epp: --ha-enable-leader-election: needs --pool-name (the Lease is the "
            "InferencePool's, in its namespace)"
        )
    # controller-runtime's defaults where not given
    lease_s, renew_s, retry_s = (
        default if value is None else value
        for value, default in zip(lease.values(), (15.0, 10.0, 2.0), strict=True)
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
        pool_namespace=pool_namespace(args),
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
        model_server_metrics_path=args.model_server_metrics_path,
        model_server_metrics_port=args.model_server_metrics_port or None,
        subset_filter=not args.disable_endpoint_subset_filter,
        objectives_file=args.objectives,
        outlier=outlier_cli.config_from_args(args),
        log_requests=not args.no_request_log,
        drain_timeout_s=args.drain_timeout,
        max_concurrent_streams=args.max_concurrent_streams,
        leader_election=args.ha_enable_leader_election,
        lease_duration_s=lease_s,
        renew_deadline_s=renew_s,
        retry_period_s=retry_s,
        tokenizer=args.tokenizer,
        offline=args.offline,
    )
    if not args.tracing:
        return run(opts)
    from kvgate.requestcontrol import tracing

    tracing.setup(tracing.SERVICE_EPP)
    try:
        return run(opts)
    finally:
        tracing.shutdown()  # export the spans still buffered
