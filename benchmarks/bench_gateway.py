"""Gateway overhead: added latency, max throughput and per-chunk streaming cost.

Three parts, each a separate process so they can be pinned to different cores:

* ``upstream``: an instant OpenAI-shaped model server (raw asyncio protocol on uvloop, no
  framework, so it costs the gateway's cores nothing and answers in microseconds). Serves
  /v1/chat/completions (JSON, or SSE with ``stream: true`` and ``max_tokens`` chunks),
  /v1/completions, /metrics, /health and /v1/models.
* the gateway: ``kvgate serve --policy random --endpoint <upstream>`` (or any command).
* ``load``: an open-loop load generator (aiohttp client, many connections) that sends at a
  fixed rate and reports latency percentiles, or a closed loop that finds the max req/s.

``run`` orchestrates all three with ``taskset`` pinning and prints one JSON report::

    python benchmarks/bench_gateway.py run --gateway-cpus 0,1 --other-cpus 2-7
    # issue #16's shape: llm-d's default policy, two upstreams, 1,000 req/s
    python benchmarks/bench_gateway.py run --policy llm-d-default --upstreams 2 --rate 1000 \
        --gateway-cpus 1 --other-cpus 0
    # SGLang's router on the same upstreams (kept out of kvgate's dependencies):
    pip install --target /tmp/sglr-pkg sglang-router==0.3.2
    PYTHONPATH=/tmp/sglr-pkg python benchmarks/bench_gateway.py run --target sgl-router \
        --policy cache_aware --upstreams 2 --rate 1000 --gateway-cpus 1 --other-cpus 0

Added latency = (latency through the gateway) - (latency straight to the upstream), both
measured by the same load generator at the same rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# --- the instant upstream -------------------------------------------------------------------

_CHAT_BODY = json.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
).encode()
_METRICS = (
    b"# TYPE vllm:num_requests_waiting gauge\n"
    b'vllm:num_requests_waiting{model_name="bench"} 0\n'
    b'vllm:num_requests_running{model_name="bench"} 0\n'
    b'vllm:kv_cache_usage_perc{model_name="bench"} 0.0\n'
    b'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n'
    b'vllm:prefix_cache_queries_total{model_name="bench"} 0\n'
    b'vllm:prefix_cache_hits_total{model_name="bench"} 0\n'
)
_MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","owned_by":"bench"}]}'
_CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
)


def _response(status: str, ctype: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive server that parses just enough: request line, Content-Length."""

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            length = 0
            lower = head.lower()
            i = lower.find(b"content-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i)
                length = int(lower[i + 15 : j if j > 0 else None].strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            path = head.split(b" ", 2)[1]
            self.handle(path, body)

    def handle(self, path: bytes, body: bytes) -> None:
        if path.startswith(b"/metrics"):
            self.t.write(_response("200 OK", b"text/plain", _METRICS))
        elif path.startswith(b"/health"):
            self.t.write(_response("200 OK", b"application/json", b"{}"))
        elif path.startswith(b"/v1/models"):
            self.t.write(_response("200 OK", b"application/json", _MODELS))
        elif b'"stream": true' in body or b'"stream":true' in body:
            n = 16
            k = body.find(b'"max_tokens":')
            if k >= 0:
                digits = body[k + 13 :].lstrip()[:8]
                n = int(bytes(c for c in digits if 48 <= c <= 57) or b"16")
            asyncio.get_running_loop().create_task(self.stream(n))
        else:
            self.t.write(_response("200 OK", b"application/json", _CHAT_BODY))

    async def stream(self, n: int) -> None:
        """One HTTP chunk per SSE event, each in its own loop turn (its own TCP segment),
        as a real server flushes tokens one by one."""
        self.t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for part in [_CHUNK] * n + [b"data: [DONE]\n\n"]:
            self.t.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await asyncio.sleep(0)
        self.t.write(b"0\r\n\r\n")


async def _serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


# --- minimal relays, for choosing the HTTP stack (no scheduling, no metrics) ----------------


async def _relay_aiohttp(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def handle(req: web.Request) -> web.Response:
        body = await req.read()
        async with session.post(
            upstream + req.path, data=body, headers={"content-type": "application/json"}
        ) as r:
            data = await r.read()
            return web.Response(body=data, status=r.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


_asgi_session: Any = None


async def asgi_relay(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same relay as an ASGI app (run by granian or uvicorn); upstream from $UPSTREAM."""
    global _asgi_session
    import aiohttp

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if _asgi_session is None:
        _asgi_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    async with _asgi_session.post(
        os.environ["UPSTREAM"] + scope["path"],
        data=body,
        headers={"content-type": "application/json"},
    ) as r:
        data = await r.read()
        status = r.status
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


# --- the load generator ---------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _load(
    url: str, rate: float, duration_s: float, connections: int, stream_tokens: int
) -> dict[str, Any]:
    import aiohttp

    body: dict[str, Any] = {
        "model": "bench",
        "messages": [{"role": "user", "content": "hello there, how are you?"}],
        "max_tokens": max(1, stream_tokens),
    }
    if stream_tokens:
        body["stream"] = True
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)

        # warm up the connection pool
        await asyncio.gather(*(one() for _ in range(min(connections, 50))))
        latencies.clear()
        errors = 0
        tasks: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        if rate > 0:  # open loop at a fixed rate
            n = int(rate * duration_s)
            for i in range(n):
                target = started + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
        else:  # closed loop: `connections` workers as fast as possible

            async def worker() -> None:
                while time.perf_counter() - started < duration_s:
                    await one()

            await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "warmup_requests": min(connections, 50),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_pct(latencies, 0.5) * 1e3, 3),
        "p90_ms": round(_pct(latencies, 0.9) * 1e3, 3),
        "p99_ms": round(_pct(latencies, 0.99) * 1e3, 3),
    }


def _run_load(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            _load(args.url, args.rate, args.duration, args.connections, args.stream_tokens)
        )


# --- orchestration --------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float = 30.0) -> None:
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


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(port)


def _worker_pid(pid: int) -> int:
    """The process doing the work: ``pid`` itself, or its only child (granian's worker)."""
    time.sleep(0.5)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = children.read_text().split()
    except OSError:
        return pid
    return (
        int(kids[0])
        if len(kids) == 1 and "granian" in Path(f"/proc/{pid}/cmdline").read_text()
        else pid
    )


def _wrk(cpus: str | None, url: str, connections: int, duration_s: float) -> dict[str, Any]:
    """Closed-loop max throughput with wrk (C, so the load generator is not the limit)."""
    import tempfile

    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "hello there, how are you?"}],
            "max_tokens": 1,
        }
    )
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(duration_s)}s",
        "--latency",
        "-s",
        f.name,
        url,
    ]
    out = subprocess.run(_pinned(cpus, cmd), capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    return {
        "tool": "wrk",
        "requests": total,
        "achieved_rps": rps,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50": "".join(p50.groups()) if p50 else None,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *cmd]
    return cmd


def _load_cmd(
    cpus: str | None, url: str, *, preexec: Callable[[], None] | None = None, **kw: Any
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "load", "--url", url]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(
        _pinned(cpus, cmd), capture_output=True, text=True, check=True, preexec_fn=preexec
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run(args: argparse.Namespace) -> dict[str, Any]:
    up_ports = [_free_port() for _ in range(args.upstreams)]
    up_port, gw_port = up_ports[0], _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(args.log, "wb")  # noqa: SIM115
    try:
        for port in up_ports:
            procs.append(
                subprocess.Popen(
                    _pinned(
                        args.other_cpus, [sys.executable, __file__, "upstream", "--port", str(port)]
                    ),
                    stdout=log,
                    stderr=log,
                )
            )
            _wait(f"http://127.0.0.1:{port}/health")
        upstream_url = f"http://127.0.0.1:{up_port}"
        more_endpoints = [
            arg for port in up_ports[1:] for arg in ("--endpoint", f"http://127.0.0.1:{port}")
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        ready_path = "/ready"
        if args.target == "kvgate":
            gateway_cmd = [
                sys.executable,
                "-m",
                "kvgate",
                "serve",
                "--policy",
                args.policy,
                "--endpoint",
                upstream_url,
                *more_endpoints,
                "--port",
                str(gw_port),
                "--log-format",
                "json",
                *args.gateway_args.split(),
            ]
        elif args.target == "relay-aiohttp":
            gateway_cmd = [
                sys.executable,
                __file__,
                "relay",
                "--port",
                str(gw_port),
                "--upstream",
                upstream_url,
            ]
            ready_path = ""
        elif args.target == "sgl-router":  # sglang_router must be importable (see the docstring)
            gateway_cmd = [
                sys.executable,
                "-m",
                "sglang_router.launch_router",
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "--policy",
                args.policy if args.policy != "random" else "cache_aware",
                "--worker-urls",
                *(f"http://127.0.0.1:{port}" for port in up_ports),
                "--log-level",
                "warn",
            ]
            ready_path = "/health"
        else:  # relay-granian: granian must be importable (pip install granian)
            gateway_cmd = [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--loop",
                "uvloop",
                "--workers",
                "1",
                "--runtime-threads",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "bench_gateway:asgi_relay",
            ]
            env["UPSTREAM"] = upstream_url
            env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env.get("PYTHONPATH", "")
            ready_path = ""
        procs.append(
            subprocess.Popen(
                _pinned(args.gateway_cpus, gateway_cmd), stdout=log, stderr=log, env=env
            )
        )
        if ready_path:
            _wait(f"http://127.0.0.1:{gw_port}{ready_path}")
        else:
            _wait_port(gw_port)
        gw_pid = _worker_pid(procs[-1].pid)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        report: dict[str, Any] = {
            "target": args.target,
            "policy": args.policy,
            "gateway_cpus": args.gateway_cpus,
            "other_cpus": args.other_cpus,
            "load_average_at_start": os.getloadavg()[0],
        }
        common = {"duration": args.duration, "connections": args.connections}
        rate = args.rate
        report["upstreams"] = args.upstreams
        report["rate"] = rate
        report["direct"] = _load_cmd(args.other_cpus, direct, rate=rate, **common)
        c0 = _cpu_s(gw_pid)
        report["gateway"] = _load_cmd(args.other_cpus, via, rate=rate, **common)
        c1 = _cpu_s(gw_pid)
        done = report["gateway"]["requests"] + report["gateway"]["warmup_requests"]
        report["gateway_cpu_ms_per_request_at_rate"] = round((c1 - c0) / done * 1e3, 4)
        report["added_p50_ms"] = round(report["gateway"]["p50_ms"] - report["direct"]["p50_ms"], 3)
        report["added_p99_ms"] = round(report["gateway"]["p99_ms"] - report["direct"]["p99_ms"], 3)
        c0 = _cpu_s(gw_pid)
        if shutil.which("wrk"):
            report["gateway_max"] = _wrk(args.other_cpus, via, args.max_connections, args.duration)
        else:
            report["gateway_max"] = _load_cmd(
                args.other_cpus,
                via,
                rate=0,
                duration=args.duration,
                connections=args.max_connections,
            )
        c1 = _cpu_s(gw_pid)
        cpu_per_req = (c1 - c0) / max(1, report["gateway_max"]["requests"])
        report["gateway_cpu_ms_per_request_at_max"] = round(cpu_per_req * 1e3, 4)
        report["one_core_capacity_rps"] = round(1.0 / cpu_per_req) if cpu_per_req else None
        if args.target.startswith("relay"):
            return report
        n = args.chunks
        sc = {"duration": args.duration, "connections": args.connections}
        cpu0 = _cpu_s(gw_pid)
        report["direct_stream_n"] = _load_cmd(
            args.other_cpus, direct, rate=args.stream_rate, stream_tokens=n, **sc
        )
        report["gateway_stream_n"] = _load_cmd(
            args.other_cpus, via, rate=args.stream_rate, stream_tokens=n, **sc
        )
        cpu1 = _cpu_s(gw_pid)
        report["direct_stream_1"] = _load_cmd(
            args.other_cpus, direct, rate=args.stream_rate, stream_tokens=1, **sc
        )
        report["gateway_stream_1"] = _load_cmd(
            args.other_cpus, via, rate=args.stream_rate, stream_tokens=1, **sc
        )
        cpu2 = _cpu_s(gw_pid)
        added_n = report["gateway_stream_n"]["p50_ms"] - report["direct_stream_n"]["p50_ms"]
        added_1 = report["gateway_stream_1"]["p50_ms"] - report["direct_stream_1"]["p50_ms"]
        report["per_chunk_added_latency_ms"] = round((added_n - added_1) / (n - 1), 4)
        # gateway CPU per relayed chunk: CPU of the n-chunk run minus the 1-chunk run
        reqs_n = (
            report["gateway_stream_n"]["requests"] + report["gateway_stream_n"]["warmup_requests"]
        )
        reqs_1 = (
            report["gateway_stream_1"]["requests"] + report["gateway_stream_1"]["warmup_requests"]
        )
        if reqs_n and reqs_1:
            per_req_n = (cpu1 - cpu0) / reqs_n
            per_req_1 = (cpu2 - cpu1) / reqs_1
            report["per_chunk_cpu_ms"] = round((per_req_n - per_req_1) / (n - 1) * 1e3, 4)
        return report
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--rate", type=float, default=500.0, help="req/s; 0 = closed loop")
    ld.add_argument("--duration", type=float, default=10.0)
    ld.add_argument("--connections", type=int, default=64)
    ld.add_argument("--stream-tokens", type=int, default=0)
    rl = sub.add_parser("relay", help="a minimal aiohttp relay (stack comparison)")
    rl.add_argument("--port", type=int, required=True)
    rl.add_argument("--upstream", required=True)
    rn = sub.add_parser("run")
    rn.add_argument(
        "--target",
        choices=("kvgate", "relay-aiohttp", "relay-granian", "sgl-router"),
        default="kvgate",
        help="what sits between load and upstream",
    )
    rn.add_argument("--policy", default="random")
    rn.add_argument("--upstreams", type=int, default=1, help="instant upstreams behind the gateway")
    rn.add_argument("--rate", type=float, default=500.0, help="req/s of the open-loop runs")
    rn.add_argument("--gateway-cpus", default=None, help="taskset list for the gateway, e.g. 0,1")
    rn.add_argument("--other-cpus", default=None, help="taskset list for upstream and load")
    rn.add_argument("--duration", type=float, default=10.0)
    rn.add_argument("--connections", type=int, default=64)
    rn.add_argument("--max-connections", type=int, default=128)
    rn.add_argument("--chunks", type=int, default=100)
    rn.add_argument("--stream-rate", type=float, default=50.0, help="streams/s for the chunk test")
    rn.add_argument("--gateway-args", default="", help="extra kvgate serve flags")
    rn.add_argument("--log", type=Path, default=Path("/tmp/bench_gateway.log"))
    args = parser.parse_args()
    if args.cmd == "upstream":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_upstream(args.port))
    elif args.cmd == "relay":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_relay_aiohttp(args.port, args.upstream))
    elif args.cmd == "load":
        # the generator's own full collections (aiohttp's import heap, 9-17 ms each) were in
        # every run's p99, with or without a gateway: walk only what the run allocates
        gc.collect()
        gc.freeze()
        print(json.dumps(_run_load(args)))
    else:
        print(json.dumps(_run(args), indent=2))


if __name__ == "__main__":
    main()
