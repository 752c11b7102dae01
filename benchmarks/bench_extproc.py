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

Every ext_proc variant runs against one EPP per ``--grpc-servers`` entry (``kvgate epp
--grpc-server grpcio`` and ``h2`` by default), each behind its own Envoy, in the same rounds.

``--grpc-floor`` measures instead what part of the EPP's CPU is gRPC itself: the same
Envoy-like message exchange (full-duplex, one JSON request and response) driven against a
do-nothing grpc.aio ext_proc servicer and against ``kvgate epp`` (each ``--grpc-servers``).
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


def _decision_mean_ms(metrics_port: int) -> float | None:
    """Mean of the EPP's own decision time (kvgate_epp_decision_duration_seconds)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = re.search(r"^kvgate_epp_decision_duration_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^kvgate_epp_decision_duration_seconds_count (\S+)$", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return round(float(total.group(1)) / float(count.group(1)) * 1e3, 3)


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
        # one EPP per ext_proc server (--grpc-server), each behind its own Envoys
        epps: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
        for server in args.grpc_servers.split(","):
            epp_port, health_port, metrics_port = _free_port(), _free_port(), _free_port()
            profile = []
            if args.epp_profile:
                profile = ["-m", "cProfile", "-o", f"{args.epp_profile}.{server}"]
            epp_cmd = [sys.executable, *profile, "-m", "kvgate", "epp", "--host", "127.0.0.1"]
            epp_cmd += ["--grpc-port", str(epp_port), "--grpc-health-port", str(health_port)]
            epp_cmd += ["--metrics-port", str(metrics_port), "--policy", args.policy]
            epp_cmd += ["--grpc-server", server]
            for port in upstreams:
                epp_cmd += ["--endpoint", f"127.0.0.1:{port}"]
            epps[server] = (spawn(epp_cmd, args.proxy_cpus), epp_port, metrics_port)
            _wait(f"http://127.0.0.1:{metrics_port}/healthz")
        configs: dict[str, str] = {}
        envoys: dict[str, subprocess.Popen[bytes]] = {}
        epp_of: dict[str, subprocess.Popen[bytes] | None] = {}
        for variant in args.variants.split(","):
            mode = VARIANTS[variant]
            for server, (epp, epp_port, _) in epps.items():
                name = variant if mode is None else f"{variant}/{server}"
                path, ports = _envoy_config(tmp, name.replace("/", "-"), epp_port, upstreams, mode)
                envoys[name] = spawn(
                    [*envoyconfig.command(path), "--concurrency", "2"], args.proxy_cpus
                )
                _wait(f"http://127.0.0.1:{ports.admin}/ready")
                configs[name] = f"http://127.0.0.1:{ports.listen}/v1/chat/completions"
                epp_of[name] = None if mode is None else epp
                if mode is None:
                    break  # routing alone does not involve an EPP
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, url in configs.items():
                envoy_pid = envoys[name].pid
                epp_proc = epp_of[name]
                epp_pid = epp_proc.pid if epp_proc is not None else os.getpid()
                cpu0, env0 = _cpu_s(epp_pid), _cpu_s(envoy_pid)
                result = _load(args.other_cpus, url, args.rate, args.duration, args.connections)
                cpu1, env1 = _cpu_s(epp_pid), _cpu_s(envoy_pid)
                n = max(1, result["requests"] + result.get("warmup_requests", 0))
                # CPU per request counts only these processes' own cycles: far less
                # sensitive to a busy machine than latency
                if epp_proc is not None:
                    result["epp_cpu_ms_per_request"] = round((cpu1 - cpu0) / n * 1e3, 3)
                result["envoy_cpu_ms_per_request"] = round((env1 - env0) / n * 1e3, 3)
                result["load_average_1m"] = round(os.getloadavg()[0], 2)
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
            "epp_decision_mean_ms": {
                server: _decision_mean_ms(metrics_port)
                for server, (_, _, metrics_port) in epps.items()
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


# --- gRPC floor: kvgate's own cost over a do-nothing ext_proc server -----------------------

_NULL_SERVER = """
import asyncio, sys
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
REPLIES = {
    "request_body": [ep.ProcessingResponse(request_headers=ep.HeadersResponse()),
                     ep.ProcessingResponse(request_body=ep.BodyResponse())],
    "response_headers": [ep.ProcessingResponse(response_headers=ep.HeadersResponse())],
    "response_body": [ep.ProcessingResponse(response_body=ep.BodyResponse())],
}
class Null(ep_grpc.ExternalProcessorServicer):
    async def Process(self, requests, context):
        async for msg in requests:
            for reply in REPLIES.get(msg.WhichOneof("request"), ()):
                yield reply
async def main():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ep_grpc.add_ExternalProcessorServicer_to_server(Null(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


async def _drive_streams(port: int, streams: int, concurrency: int) -> float:
    """Play Envoy (full-duplex, one JSON request and response); returns elapsed seconds."""
    import asyncio

    import grpc
    from envoy.config.core.v3 import base_pb2 as core
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

    def headers(values: dict[str, str]) -> ep.HttpHeaders:
        items = [core.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        return ep.HttpHeaders(headers=core.HeaderMap(headers=items))

    duplex = pm.ProcessingMode.FULL_DUPLEX_STREAMED
    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hello there"}]}
    ).encode()
    answer = json.dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 1}}).encode()
    request_headers = ep.ProcessingRequest(
        request_headers=headers(
            {":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r"}
        ),
        protocol_config=ep.ProtocolConfiguration(
            request_body_mode=duplex, response_body_mode=duplex
        ),
    )
    request_body = ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True))
    response_headers = ep.ProcessingRequest(
        response_headers=headers({":status": "200", "content-type": "application/json"})
    )
    response_body = ep.ProcessingRequest(response_body=ep.HttpBody(body=answer, end_of_stream=True))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)

        async def one() -> None:
            call = stub.Process()
            await call.write(request_headers)
            await call.write(request_body)
            await call.read()
            await call.read()
            # kvgate holds a JSON answer's headers until its body (server.py): two replies
            # follow the body, as the do-nothing servicer's one per message
            await call.write(response_headers)
            await call.write(response_body)
            await call.read()
            await call.read()
            await call.done_writing()

        for _ in range(50):
            await one()
        gate = asyncio.Semaphore(concurrency)

        async def gated() -> None:
            async with gate:
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(gated() for _ in range(streams)))
        return time.perf_counter() - started


def grpc_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Server CPU per ext_proc stream: a do-nothing grpc.aio servicer vs kvgate epp."""
    import asyncio

    tmp = Path(args.workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "null_extproc.py").write_text(_NULL_SERVER)
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "grpc_floor.log", "wb")  # noqa: SIM115
    out: dict[str, Any] = {"streams": args.streams, "concurrency": 8}
    try:
        upstreams = [_free_port() for _ in range(2)]
        for port in upstreams:
            cmd = [sys.executable, str(GATEWAY_BENCH), "upstream", "--port", str(port)]
            procs.append(subprocess.Popen(_pinned(args.other_cpus, cmd), stdout=log, stderr=log))
        for port in upstreams:
            _wait(f"http://127.0.0.1:{port}/health")
        null_port = _free_port()
        null = subprocess.Popen(
            _pinned(
                args.proxy_cpus, [sys.executable, str(tmp / "null_extproc.py"), str(null_port)]
            ),
            stdout=log,
            stderr=log,
        )
        procs.append(null)
        targets = [("null_servicer", null, null_port)]
        for server in args.grpc_servers.split(","):
            epp_port, metrics_port = _free_port(), _free_port()
            epp_cmd = [sys.executable, "-m", "kvgate", "epp", "--host", "127.0.0.1"]
            epp_cmd += ["--grpc-port", str(epp_port), "--grpc-health-port", str(_free_port())]
            epp_cmd += ["--metrics-port", str(metrics_port), "--policy", args.policy]
            epp_cmd += ["--grpc-server", server]
            for port in upstreams:
                epp_cmd += ["--endpoint", f"127.0.0.1:{port}"]
            epp = subprocess.Popen(_pinned(args.proxy_cpus, epp_cmd), stdout=log, stderr=log)
            procs.append(epp)
            _wait(f"http://127.0.0.1:{metrics_port}/healthz")
            targets.append((f"kvgate_epp_{server}", epp, epp_port))
        time.sleep(1.0)
        for _ in range(args.rounds):
            for name, proc, port in targets:
                idle0 = _cpu_s(proc.pid)
                time.sleep(1.0)
                idle_per_s = _cpu_s(proc.pid) - idle0  # the EPP scrapes in the background
                cpu0 = _cpu_s(proc.pid)
                elapsed = asyncio.run(_drive_streams(port, args.streams, 8))
                used = _cpu_s(proc.pid) - cpu0 - idle_per_s * elapsed
                out.setdefault(name, []).append(
                    {
                        "server_cpu_ms_per_stream": round(used / args.streams * 1e3, 3),
                        "streams_per_s": round(args.streams / elapsed, 1),
                    }
                )
        out["load_average"] = os.getloadavg()
        return out
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
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
    p.add_argument(
        "--epp-profile", default=None, help="run kvgate epp under cProfile, into FILE.<server>"
    )
    p.add_argument(
        "--grpc-servers",
        default="grpcio,h2",
        help="kvgate epp --grpc-server values to compare, one EPP each (grpcio,h2)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"Envoy variants to run, comma-separated ({','.join(VARIANTS)})",
    )
    p.add_argument(
        "--grpc-floor",
        action="store_true",
        help="instead: server CPU per stream of a do-nothing ext_proc server vs kvgate epp",
    )
    p.add_argument("--streams", type=int, default=2000, help="streams per --grpc-floor round")
    args = p.parse_args()
    print(json.dumps(grpc_floor(args) if args.grpc_floor else run(args), indent=2))


if __name__ == "__main__":
    main()
