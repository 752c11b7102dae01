"""``kvgate epp`` flags: GIE's spelling, Go durations and booleans, clear errors."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

import pytest

from kvgate.cli import build_parser
from kvgate.extproc.cli import (
    _setup_logging,
    parse_bool,
    parse_ports,
    parse_zap_level,
    pool_namespace,
    unsupported_flags,
)

SEED_ARGS = [
    "--pool-group", "inference.networking.x-k8s.io",
    "--pool-name", "qwen-model-inference-pool",
    "--pool-namespace", "my-llmd-deployment",
    "--zap-encoder", "json",
    "--grpc-port", "9002",
    "--grpc-health-port", "9003",
    "--secure-serving",
    "--model-server-metrics-scheme", "https",
    "--config-text", "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n",
]  # fmt: skip


def test_the_seed_scheduler_args_parse_verbatim() -> None:
    args = build_parser().parse_args(["epp", *SEED_ARGS])
    assert args.pool_group == "inference.networking.x-k8s.io"
    assert args.pool_name == "qwen-model-inference-pool"
    assert args.grpc_port == 9002 and args.grpc_health_port == 9003
    assert args.secure_serving is True
    assert args.model_server_metrics_scheme == "https"
    assert args.zap_encoder == "json"
    assert args.config_text.startswith("apiVersion")


def test_gie_metric_and_refresh_flags() -> None:
    args = build_parser().parse_args(
        [
            "epp",
            "--endpoint", "127.0.0.1:8001",
            "--refresh-metrics-interval=25ms",
            "--metrics-staleness-threshold", "1m30s",
            "--total-queued-requests-metric", 'vllm:num_requests_waiting{engine="0"}',
            "--kv-cache-usage-percentage-metric", "vllm:gpu_cache_usage_perc",
            "--secure-serving=false",
        ]
    )  # fmt: skip
    assert args.refresh_metrics_interval == pytest.approx(0.025)
    assert args.metrics_staleness_threshold == pytest.approx(90.0)
    assert args.secure_serving is False
    assert args.kv_cache_usage_percentage_metric == "vllm:gpu_cache_usage_perc"


def test_bools() -> None:
    assert parse_bool("True") and parse_bool("1") and not parse_bool("false")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_no_endpoints_is_a_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "epp", "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no endpoints")


def test_grpc_server_flag_defaults_to_h2_and_keeps_grpcio() -> None:
    assert build_parser().parse_args(["epp", *SEED_ARGS]).grpc_server == "h2"
    args = build_parser().parse_args(["epp", *SEED_ARGS, "--grpc-server", "grpcio"])
    assert args.grpc_server == "grpcio"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["epp", *SEED_ARGS, "--grpc-server", "tornado"])


#: Every flag of GIE's EPP: pkg/epp/server/options.go (AddFlags) and controller-runtime's
#: zap.Options.BindFlags, as in llm-d/llm-d-inference-scheduler (commit 520af47, 2026-05).
GIE_FLAGS_WITH_A_VALUE = {
    "--grpc-port": "9002", "--pool-group": "inference.networking.k8s.io",
    "--pool-namespace": "ns", "--pool-name": "p", "--endpoint-selector": "",
    "--endpoint-target-ports": "8000", "--model-server-metrics-scheme": "http",
    "--model-server-metrics-path": "/metrics", "--model-server-metrics-port": "0",
    "--refresh-metrics-interval": "50ms", "--refresh-prometheus-metrics-interval": "5s",
    "--metrics-staleness-threshold": "2s", "--total-queued-requests-metric": "q",
    "--total-running-requests-metric": "r", "--kv-cache-usage-percentage-metric": "k",
    "--lora-info-metric": "l", "--cache-info-metric": "c", "--metrics-port": "9090",
    "--grpc-health-port": "9003", "--cert-path": "/tmp", "--config-file": "f",
    "--config-text": "t", "--v": "1", "--zap-encoder": "json", "--zap-log-level": "info",
    "--zap-stacktrace-level": "error", "--zap-time-encoding": "rfc3339",
}  # fmt: skip
GIE_BOOL_FLAGS = [
    "--ha-enable-leader-election", "--disable-endpoint-subset-filter",
    "--model-server-metrics-https-insecure-skip-verify", "--tracing", "--health-checking",
    "--enable-pprof", "--enable-cert-reload", "--secure-serving", "--metrics-endpoint-auth",
    "--zap-devel",
]  # fmt: skip


def test_every_gie_flag_is_accepted() -> None:
    parser = build_parser()
    for name, value in GIE_FLAGS_WITH_A_VALUE.items():
        parser.parse_args(["epp", name, value])
        parser.parse_args(["epp", f"{name}={value}"])
    for name in GIE_BOOL_FLAGS:
        for form in ([name], [f"{name}=true"], [f"{name}=false"], [name, "false"]):
            parser.parse_args(["epp", *form])


def test_gie_defaults_and_off_values_all_act() -> None:
    args = build_parser().parse_args(["epp", "--endpoint", "127.0.0.1:8000"])
    assert unsupported_flags(args) == []
    off = [f"{f}=false" for f in GIE_BOOL_FLAGS if f != "--secure-serving"]
    args = build_parser().parse_args(
        ["epp", *off, "--model-server-metrics-path=/metrics", "--model-server-metrics-port=0"]
    )
    assert unsupported_flags(args) == []
    # these act (scrape path and port, the subset hint ignored), so any value is accepted
    args = build_parser().parse_args(
        [
            "epp",
            "--disable-endpoint-subset-filter",
            "--model-server-metrics-path=/stats",
            "--model-server-metrics-port=9000",
        ]
    )
    assert unsupported_flags(args) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--enable-pprof", "true"],
        ["--metrics-endpoint-auth"],
        ["--enable-cert-reload"],
        ["--health-checking"],
        ["--endpoint-selector", "app=vllm"],
        ["--endpoint-target-ports", "8000,8001"],
    ],
)
def test_a_value_kvgate_cannot_honour_is_one_line(argv: list[str]) -> None:
    args = build_parser().parse_args(["epp", *argv])
    (line,) = unsupported_flags(args)
    assert line.startswith(f"kvgate epp: {argv[0].split('=')[0]}=") and "not supported" in line


def test_unsupported_flag_stops_start_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "epp", "--endpoint", "127.0.0.1:1", "--enable-pprof"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "--enable-pprof=true: not supported" in last and "--enable-pprof=false" in last


def test_pool_namespace_falls_back_to_namespace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.delenv("NAMESPACE", raising=False)
    assert pool_namespace(parser.parse_args(["epp"])) == "default"
    monkeypatch.setenv("NAMESPACE", "team-a")
    assert pool_namespace(parser.parse_args(["epp"])) == "team-a"
    assert pool_namespace(parser.parse_args(["epp", "--pool-namespace", "b"])) == "b"


def test_zap_levels_and_bad_values() -> None:
    assert parse_zap_level("debug") == logging.DEBUG and parse_zap_level("3") == logging.DEBUG
    assert parse_zap_level("error") == logging.ERROR
    for bad in ("verbose", "0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_zap_level(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ports("80,x")


def test_zap_json_time_encoding_and_stacktrace_level() -> None:
    args = build_parser().parse_args(
        ["epp", "--zap-encoder", "json", "--zap-time-encoding", "rfc3339",
         "--zap-stacktrace-level", "error"]
    )  # fmt: skip
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        _setup_logging(args)
        formatter = root.handlers[0].formatter
        assert formatter is not None
        try:
            raise ValueError("boom")
        except ValueError:
            warn = logging.LogRecord("x", logging.WARNING, "f", 1, "w", None, sys.exc_info())
            err = logging.LogRecord("x", logging.ERROR, "f", 1, "e", None, sys.exc_info())
        warn_entry, err_entry = (
            json.loads(formatter.format(warn)),
            json.loads(formatter.format(err)),
        )
        assert warn_entry["ts"].endswith("Z") and "T" in warn_entry["ts"]
        assert "stacktrace" not in warn_entry and "ValueError" in warn_entry["error"]
        assert "Traceback" in err_entry["stacktrace"]
        assert root.level == logging.INFO  # --zap-devel defaults on, but json was asked for
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
