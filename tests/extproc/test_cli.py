"""``kvgate epp`` flags: GIE's spelling, Go durations and booleans, clear errors."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from kvgate.cli import build_parser
from kvgate.extproc.cli import parse_bool, parse_duration

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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("1h", 3600.0), ("0.5", 0.5), ("250us", 0.00025)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 ms", "ms", "1d", "2s3"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(bad)


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
