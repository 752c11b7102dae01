"""Envoy ext_proc endpoint picker: latency added by ``kvgate epp`` over Envoy routing alone.

Processes (each pinned with ``taskset`` when CPU lists are given):

* two instant upstreams (``bench_gateway.py upstream``: OpenAI-shaped answers in microseconds,
  /metrics and /health for the EPP's scraper);
* ``kvgate epp --policy llm-d-default`` (queue 2 / kv 2 / approximate prefix 3) over both;
* Envoy from examples/envoy/envoy.yaml in each of the VARIANTS below (GIE's full-duplex
  layout, buffered bodies, a lean layout whose responses bypass the EPP), and once with
  the ext_proc filter removed so requests take the config's plain round-robin route:
  "Envoy routing alone";
* the open-loop load generator of ``bench_gateway.py load`` at a fixed rate.

Envoy (``--concurrency 2``) and the EPP share the ``--proxy-cpus`` (2 cores, as the issue
asks); upstreams and load run on ``--other-cpus``. Rounds alternate the configurations so
drift hits them alike; the report gives each run's percentiles and, per variant, the
added median = median(ext_proc) - median(routing alone) over the rounds::

    python benchmarks/bench_extproc.py --rate 500 --duration 10 --rounds 3 \\
        --proxy-cpus 0,1 --other-cpus 2-7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from kvgate.extproc import envoyconfig  # noqa: E402

GATEWAY_BENCH = HERE / "bench_gateway.py"
EXAMPLE = ROOT / "examples" / "envoy" / "envoy.yaml"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def _pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    cpus: str | None, url: str, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    cmd = [sys.executable, str(GATEWAY_BENCH), "load", "--url", url, "--rate", str(rate)]
    cmd += ["--duration", str(duration), "--connections", str(connections)]
    out = subprocess.run(_pinned(cpus, cmd), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


#: Envoy variants: None = routing alone (no ext_proc); else options for envoyconfig.adapt.
VARIANTS: dict[str, dict[str, str] | None] = {
    "routing_alone": None,
    # GIE's layout: every request and response byte passes through the EPP
    "ext_proc_full_duplex": {"body_mode": "FULL_DUPLEX_STREAMED"},
    "ext_proc_buffered": {"body_mode": "BUFFERED"},
    # the request goes through the EPP, the response bypasses it (no usage for the hooks)
    "ext_proc_lean": {
        "body_mode": "FULL_DUPLEX_STREAMED",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
    },
}


def _envoy_config(
    tmp: Path, name: str, epp_port: int, upstreams: list[int], options: dict[str, str] | None
) -> tuple[Path, envoyconfig.EnvoyPorts]:
    ports = envoyconfig.EnvoyPorts(listen=_free_port(), admin=_free_port(), epp=epp_port)
    cfg = envoyconfig.adapt(
        EXAMPLE,
        ports,
        access_log=Path("/dev/null"),
        fallback=[("127.0.0.1", p) for p in upstreams],
        **(options or {}),  # type: ignore[arg-type]
    )
    if options is None:  # routing alone: no ext_proc, the round-robin fallback route
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ]
        hcm["http_filters"] = [
            f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"
        ]
    path = envoyconfig.write(cfg, tmp / f"{name}.yaml")
    return path, ports


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(args.workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    log = open(tmp / "bench_extproc.log", "wb")  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], cpus: str | None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(_pinned(cpus, cmd), stdout=log, stderr=log)
        procs.append(proc)
        return proc

    try:
        upstreams = [_free_port() for _ in range(2)]
        for port in upstreams:
            spawn(
                [sys.executable, str(GATEWAY_BENCH), "upstream", "--port", str(port)],
                args.other_cpus,
            )
        for port in upstreams:
            _wait(f"http://127.0.0.1:{port}/health")
        epp_port, health_port, metrics_port = _free_port(), _free_port(), _free_port()
        profile = ["-m", "cProfile", "-o", args.epp_profile] if args.epp_profile else []
        epp_cmd = [sys.executable, *profile, "-m", "kvgate", "epp", "--host", "127.0.0.1"]
        epp_cmd += ["--grpc-port", str(epp_port), "--grpc-health-port", str(health_port)]
        epp_cmd += ["--metrics-port", str(metrics_port), "--policy", args.policy]
        for port in upstreams:
            epp_cmd += ["--endpoint", f"127.0.0.1:{port}"]
        epp = spawn(epp_cmd, args.proxy_cpus)
        _wait(f"http://127.0.0.1:{metrics_port}/healthz")
        configs: dict[str, str] = {}
        envoys: dict[str, subprocess.Popen[bytes]] = {}
        for name, mode in VARIANTS.items():
            path, ports = _envoy_config(tmp, name, epp_port, upstreams, mode)
            envoys[name] = spawn(
                [*envoyconfig.command(path), "--concurrency", "2"], args.proxy_cpus
            )
            _wait(f"http://127.0.0.1:{ports.admin}/ready")
            configs[name] = f"http://127.0.0.1:{ports.listen}/v1/chat/completions"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, url in configs.items():
                envoy_pid = envoys[name].pid
                cpu0, env0 = _cpu_s(epp.pid), _cpu_s(envoy_pid)
                result = _load(args.other_cpus, url, args.rate, args.duration, args.connections)
                cpu1, env1 = _cpu_s(epp.pid), _cpu_s(envoy_pid)
                n = max(1, result["requests"] + result.get("warmup_requests", 0))
                # CPU per request counts only these processes' own cycles: far less
                # sensitive to a busy machine than latency
                result["epp_cpu_ms_per_request"] = round((cpu1 - cpu0) / n * 1e3, 3)
                result["envoy_cpu_ms_per_request"] = round((env1 - env0) / n * 1e3, 3)
                runs[name].append(result)
        base = statistics.median(r["p50_ms"] for r in runs["routing_alone"])
        added = {
            name: round(statistics.median(r["p50_ms"] for r in runs[name]) - base, 3)
            for name in configs
            if name != "routing_alone"
        }
        return {
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "policy": args.policy,
            "proxy_cpus": args.proxy_cpus,
            "other_cpus": args.other_cpus,
            "runs": runs,
            "routing_alone_p50_ms": base,
            "added_p50_ms": added,
            "added_cpu_ms_per_request": {
                name: round(
                    statistics.median(
                        r["epp_cpu_ms_per_request"] + r["envoy_cpu_ms_per_request"]
                        for r in runs[name]
                    )
                    - statistics.median(
                        r["envoy_cpu_ms_per_request"] for r in runs["routing_alone"]
                    ),
                    3,
                )
                for name in configs
                if name != "routing_alone"
            },
            "load_average": os.getloadavg(),
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--policy", default="llm-d-default")
    p.add_argument(
        "--proxy-cpus", default=None, help="taskset list for Envoy and kvgate epp, e.g. 0,1"
    )
    p.add_argument("--other-cpus", default=None, help="taskset list for upstreams and load")
    p.add_argument("--workdir", default="/tmp/bench_extproc")
    p.add_argument("--epp-profile", default=None, help="run kvgate epp under cProfile, into FILE")
    print(json.dumps(run(p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
