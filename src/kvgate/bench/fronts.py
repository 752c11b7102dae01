"""The front door a benchmark drives: ``kvgate serve``, or Envoy + ``kvgate epp``.

``serve``: one ``kvgate serve`` process, the HTTP gateway itself.
``epp``: ``kvgate epp`` (ext_proc, static endpoints) behind a real Envoy running the shipped
examples/envoy/envoy.yaml with only its ports and access-log path changed
(:mod:`kvgate.extproc.envoyconfig`), so requests take the path they take under llm-d: Envoy
asks the EPP, then forwards to the picked replica itself.

Both get the same policy arguments, endpoints and ``--objectives FILE``; both are ready when
their health URL answers and every replica is in rotation (``kvgate_endpoint_in_rotation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kvgate.bench.procs import BenchError, Proc, kvgate_argv, last_line, wait_ready

FrontKind = Literal["serve", "epp"]
FRONT_KINDS: tuple[FrontKind, ...] = ("serve", "epp")

#: The Envoy config users copy; the benchmark runs the very same file.
ENVOY_EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "envoy" / "envoy.yaml"


class FrontDidNotStart(BenchError):
    """The gateway or EPP exited while starting (its last log line says why)."""


@dataclass(frozen=True, slots=True)
class FrontSpec:
    kind: FrontKind = "serve"
    #: extra arguments of ``kvgate serve`` / ``kvgate epp`` (``--gateway-arg``)
    args: tuple[str, ...] = ()
    #: InferenceObjective documents, passed as ``--objectives FILE``
    objectives: Path | None = None


@dataclass(slots=True)
class Front:
    base_url: str  # where the benchmark sends requests
    metrics_url: str  # the router's /metrics (kvgate_endpoint_in_rotation)
    procs: list[Proc] = field(default_factory=list)  # started, in start order


def start_front(
    spec: FrontSpec,
    policy_args: Sequence[str],
    endpoints: Sequence[str],
    run_dir: Path,
    free_port: Callable[[], int],
) -> Front:
    """Start the front door over ``endpoints``; on failure stop what was started and raise
    :class:`FrontDidNotStart` (the router exited) or :class:`BenchError` (a deadline)."""
    front = Front("", "")
    try:
        if spec.kind == "serve":
            _start_serve(front, spec, policy_args, endpoints, run_dir, free_port)
        elif spec.kind == "epp":
            _start_epp(front, spec, policy_args, endpoints, run_dir, free_port)
        else:
            raise BenchError(
                f"--front: expected one of {', '.join(FRONT_KINDS)}, got {spec.kind!r}"
            )
    except BaseException:
        for proc in reversed(front.procs):
            proc.stop()
        raise
    return front


def _common_args(spec: FrontSpec, policy_args: Sequence[str]) -> list[str]:
    args = list(policy_args)
    if spec.objectives is not None:
        args += ["--objectives", str(spec.objectives)]
    return args


def _await(front: Front, proc: Proc, url: str, what: str) -> None:
    try:
        wait_ready([(proc, url)], 60.0)
    except BenchError as exc:
        if not proc.alive():
            raise FrontDidNotStart(f"{what} did not start: {last_line(proc)}") from exc
        raise


def _start_serve(
    front: Front,
    spec: FrontSpec,
    policy_args: Sequence[str],
    endpoints: Sequence[str],
    run_dir: Path,
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-format", "text"]
    argv += _common_args(spec, policy_args)
    for url in endpoints:
        argv += ["--endpoint", url]
    argv += spec.args
    gateway = Proc(
        "gateway",
        kvgate_argv(*argv),
        run_dir / "logs" / "gateway.log",
        unset_env=("PYTHONHASHSEED",),
    )
    front.procs.append(gateway)
    front.base_url = f"http://127.0.0.1:{port}"
    front.metrics_url = front.base_url + "/metrics"
    _await(front, gateway, front.base_url + "/ready", "gateway")


def _start_epp(
    front: Front,
    spec: FrontSpec,
    policy_args: Sequence[str],
    endpoints: Sequence[str],
    run_dir: Path,
    free_port: Callable[[], int],
) -> None:
    from kvgate.extproc import envoyconfig

    if not ENVOY_EXAMPLE.is_file():
        raise BenchError(
            f"{ENVOY_EXAMPLE}: --front epp: expected the repository's Envoy example "
            "(run from a kvgate checkout)"
        )
    grpc, health, metrics = free_port(), free_port(), free_port()
    argv = ["epp", "--host", "127.0.0.1", "--grpc-port", str(grpc)]
    argv += ["--grpc-health-port", str(health), "--metrics-port", str(metrics)]
    argv += ["--refresh-metrics-interval", "50ms"]  # GIE's default, said out loud
    argv += _common_args(spec, policy_args)
    for url in endpoints:
        argv += ["--endpoint", url]
    argv += spec.args
    epp = Proc(
        "epp", kvgate_argv(*argv), run_dir / "logs" / "epp.log", unset_env=("PYTHONHASHSEED",)
    )
    front.procs.append(epp)
    front.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
    _await(front, epp, f"http://127.0.0.1:{metrics}/healthz", "kvgate epp")

    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=grpc)
    cfg = envoyconfig.adapt(ENVOY_EXAMPLE, ports, access_log=run_dir / "logs" / "envoy-access.log")
    config = envoyconfig.write(cfg, run_dir / "envoy.yaml")
    envoy = Proc("envoy", envoyconfig.command(config), run_dir / "logs" / "envoy.log")
    front.procs.append(envoy)
    _await(front, envoy, f"http://127.0.0.1:{ports.admin}/ready", "envoy")
    front.base_url = f"http://127.0.0.1:{ports.listen}"
