"""Start a real ``kvgate epp`` and a real Envoy (the shipped examples/envoy/envoy.yaml) in
front of it, waiting for both with deadlines.

    front = start_epp_behind_envoy(spawn, tmp_path, "--endpoint", "127.0.0.1:8000", ...)
    front.url  # Envoy's listener; front.metrics_url: the EPP's /metrics
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"


@dataclass(frozen=True)
class EnvoyFront:
    url: str  # http://127.0.0.1:<Envoy's listener>
    metrics_url: str  # the EPP's /metrics
    access_log: Path
    epp: Proc
    envoy: Proc


def start_epp_behind_envoy(
    spawn: Callable[..., Proc], tmp: Path, *epp_args: str, log_format: str | None = None
) -> EnvoyFront:
    """``kvgate epp *epp_args`` on free ports, Envoy in front; ``log_format`` replaces the
    access log's line format (e.g. to print ``%DYNAMIC_METADATA(...)%``)."""
    assert EXAMPLE.exists(), f"{EXAMPLE}: the shipped Envoy example is missing"
    grpc, health, metrics = free_port(), free_port(), free_port()
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics), *epp_args,
        ),
        name="epp",
    )  # fmt: skip
    access_log = tmp / "envoy-access.log"
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=grpc)
    cfg = envoyconfig.adapt(EXAMPLE, ports, access_log=access_log)
    if log_format is not None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        log_cfg = hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"]
        log_cfg["text_format_source"]["inline_string"] = log_format
    envoy = spawn(envoyconfig.command(envoyconfig.write(cfg, tmp / "envoy.yaml")), name="envoy")
    epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=30)
    envoy.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    return EnvoyFront(
        f"http://127.0.0.1:{ports.listen}",
        f"http://127.0.0.1:{metrics}/metrics",
        access_log,
        epp,
        envoy,
    )
