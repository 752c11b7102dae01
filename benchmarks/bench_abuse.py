"""Well-behaved latency through ``kvgate serve`` while hostile clients run.

Well-behaved clients send chat completions at a fixed rate (500 req/s by default) with
benchmarks/bench_gateway.py's open-loop load generator to its instant upstream (both run as
that script's ``load`` and ``upstream`` subcommands, in their own processes). The same load
runs twice against the same gateway: alone, then while this process runs the abusers:

* **slowloris**: connections that drip one header byte every ``--drip-interval`` and never
  finish a request head (the gateway closes them at ``--header-timeout``; they reconnect);
* **idle**: thousands of connections opened and never written to (closed at the header
  timeout too; they reconnect);
* **oversized bodies**: POSTs declaring (or, chunked, sending) more than
  ``--max-body-bytes`` (413);
* **deeply nested JSON**: 100,000-deep ``[[[...]]]`` bodies (400).

The report (one JSON document) gives the well-behaved p50/p90/p99 and errors with and
without abuse, what the abusers did and got (connections held and closed, statuses), and the
gateway's RSS and open fds before, during and after::

    python benchmarks/bench_abuse.py --duration 10                    # a quick check
    python benchmarks/bench_abuse.py --duration 60 --idle 4000 --slowloris 500 \\
        --out results/abuse.json                                        # the figures

On a machine with cores to spare, pin the gateway apart (``--gateway-cpus 0,1
--other-cpus 2-7``) so the abusers and the load generator do not compete with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the instant upstream, the load generator, pinning and waits
import bench_gateway as bg

NESTED = b"[" * 100_000 + b"]" * 100_000


@dataclass
class AbuseStats:
    """What the abusers did, and how the gateway answered them."""

    connections_opened: Counter[str] = field(default_factory=Counter)
    closed_by_gateway: Counter[str] = field(default_factory=Counter)
    connect_errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "oversized:413"
    held_now: Counter[str] = field(default_factory=Counter)
    held_max: Counter[str] = field(default_factory=Counter)
    close_times: list[float] = field(default_factory=list)  # time.time() of each close

    def hold(self, kind: str, delta: int) -> None:
        self.held_now[kind] += delta
        self.held_max[kind] = max(self.held_max[kind], self.held_now[kind])

    def report(self) -> dict[str, Any]:
        return {
            name: dict(sorted(getattr(self, name).items()))
            for name in (
                "connections_opened",
                "closed_by_gateway",
                "connect_errors",
                "statuses",
                "held_max",
            )
        }


async def _hold(
    kind: str, port: int, stats: AbuseStats, stop: asyncio.Event, drip_s: float | None
) -> None:
    """One abusive connection, reopened whenever the gateway closes it: silent (idle) or
    dripping an unfinished request head (slowloris)."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.connect_errors[kind] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            continue
        stats.connections_opened[kind] += 1
        stats.hold(kind, 1)
        try:
            if drip_s is not None:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            closed = asyncio.ensure_future(reader.read(65536))
            while not stop.is_set():
                if drip_s is None:
                    waited = [closed, asyncio.ensure_future(stop.wait())]
                    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                    waited[1].cancel()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(closed), drip_s)
                if closed.done():
                    stats.closed_by_gateway[kind] += 1
                    stats.close_times.append(time.time())
                    break
                if drip_s is not None:
                    writer.write(b"x")  # one more byte of a header line that never ends
                    await writer.drain()
            closed.cancel()
        except (OSError, asyncio.IncompleteReadError):
            stats.closed_by_gateway[kind] += 1
            stats.close_times.append(time.time())
        finally:
            stats.hold(kind, -1)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _post_raw(port: int, head: bytes, body_parts: list[bytes]) -> str:
    """Send a request, return its status code (or how it failed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect_error"
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"
    except (OSError, TimeoutError):
        return "closed"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _bodies(
    kind: str, port: int, rate: float, max_body: int, stats: AbuseStats, stop: asyncio.Event
) -> None:
    """Oversized or deeply nested bodies at ``rate`` per second, each on a new connection."""
    n = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        path = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        )
        if kind == "nested":
            head = path + b"Content-Length: %d\r\n\r\n" % len(NESTED)
            status = await _post_raw(port, head, [NESTED])
        elif i % 2 == 0:  # declared: refused from the head, before any body byte is read
            head = path + b"Content-Length: %d\r\n\r\n" % (max_body * 4)
            status = await _post_raw(port, head, [b"x" * 65536])
        else:  # chunked, no length: refused once past the limit
            head = path + b"Transfer-Encoding: chunked\r\n\r\n"
            chunk = b"%x\r\n" % (256 * 1024) + b"x" * (256 * 1024) + b"\r\n"
            parts = [chunk] * (max_body // (256 * 1024) + 2) + [b"0\r\n\r\n"]
            status = await _post_raw(port, head, parts)
        stats.statuses[f"{kind}:{status}"] += 1

    started = time.perf_counter()
    while not stop.is_set():
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks, return_exceptions=True)


def _proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds and CPU seconds used so far of ``pid``, from /proc."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return {
        "rss_mib": round(rss_kb / 1024, 1),
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": round(cpu_s, 2),
    }


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that ended and were waited for (the load
    generator, after its run)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _usage(
    gw_before: dict[str, float], gw_after: dict[str, float], children_before: float
) -> dict[str, float]:
    """What a load run cost in CPU seconds: the gateway's and the load generator's."""
    return {
        "gateway_cpu_s": round(gw_after["cpu_s"] - gw_before["cpu_s"], 2),
        "load_generator_cpu_s": round(_children_cpu_s() - children_before, 2),
    }


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _nice_thread(value: int) -> None:
    """Set this thread's nice value (Linux keeps one per thread); lowering it needs root."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)


async def _with_abuse(args: argparse.Namespace, port: int, gw_pid: int, via: str) -> dict[str, Any]:
    # --abusers-nice: the abusers (this thread) yield a shared core to the load generator, the
    # prober and the upstream, which are started back at the base value: on a machine too
    # small to put the abusers on other hosts, the well-behaved figures then measure the
    # gateway rather than the abusers' CPU on the load generator's core
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if args.abusers_cpus:  # this thread only: the load generator and prober pin themselves
        os.sched_setaffinity(threading.get_native_id(), _cpus(args.abusers_cpus))
    measured_nice: Callable[[], None] | None = None
    if args.abusers_nice:
        _nice_thread(base + args.abusers_nice)
        measured_nice = functools.partial(_nice_thread, base)

    stats = AbuseStats()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_hold("idle", port, stats, stop, None)) for _ in range(args.idle)
    ] + [
        asyncio.create_task(_hold("slowloris", port, stats, stop, args.drip_interval))
        for _ in range(args.slowloris)
    ]
    tasks.append(
        asyncio.create_task(
            _bodies("oversized", port, args.body_rate, args.max_body_bytes, stats, stop)
        )
    )
    tasks.append(
        asyncio.create_task(
            _bodies("nested", port, args.body_rate, args.max_body_bytes, stats, stop)
        )
    )
    # the abusers are in place before the well-behaved load starts
    deadline = time.monotonic() + 30
    while stats.held_now["idle"] + stats.held_now["slowloris"] < 0.9 * (args.idle + args.slowloris):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    during = _proc_sample(gw_pid)
    cpu_before, self_before = _children_cpu_s(), _self_cpu_s()
    prober = subprocess.Popen(
        bg._pinned(
            args.other_cpus,
            [sys.executable, __file__, "--probe", str(port), "--duration", str(args.duration)],
        ),
        stdout=subprocess.PIPE,
        preexec_fn=measured_nice,
    )
    load = await asyncio.to_thread(
        bg._load_cmd, args.other_cpus, via, rate=args.rate, duration=args.duration,
        connections=args.connections, preexec=measured_nice,
    )  # fmt: skip
    during_end = _proc_sample(gw_pid)
    usage = _usage(during, during_end, cpu_before)
    usage["abusers_cpu_s"] = round(_self_cpu_s() - self_before, 2)  # this process
    out, _ = await asyncio.to_thread(prober.communicate)
    timeline = _timeline(json.loads(out), stats.close_times)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "load": load,
        "abusers": stats.report(),
        "gateway_at_load_start": during,
        "gateway_at_load_end": during_end,
        "usage": usage,
        # [s, slowest /health answer in the bucket (ms), connections closed by the gateway]
        "timeline": timeline,
    }


PROBE_BUCKET_S = 0.5


def probe(port: int, duration_s: float, interval_s: float = 0.01) -> dict[str, Any]:
    """GET /health every ``interval_s`` on one kept-alive connection (its own process, so the
    abusers' event loop does not delay it); the slowest answer per ``PROBE_BUCKET_S``."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.time()
    slowest: dict[int, float] = {}
    while time.time() - t0 < duration_s:
        started = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        took_ms = (time.perf_counter() - started) * 1000
        bucket = int((time.time() - t0) / PROBE_BUCKET_S)
        slowest[bucket] = max(slowest.get(bucket, 0.0), took_ms)
        time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
    return {
        "t0": t0,
        "slowest_ms": [round(slowest.get(b, 0.0), 2) for b in range(max(slowest) + 1)],
    }


def _timeline(probed: dict[str, Any], close_times: list[float]) -> list[list[float]]:
    """[seconds into the probe, slowest probe answer (ms), connections the gateway closed]
    per bucket where the probe took over 5 ms or the gateway closed any."""
    closes: Counter[int] = Counter(
        int((t - probed["t0"]) / PROBE_BUCKET_S) for t in close_times if t >= probed["t0"]
    )
    rows = []
    for b, ms in enumerate(probed["slowest_ms"]):
        if ms > 5 or closes[b]:
            rows.append([round(b * PROBE_BUCKET_S, 1), ms, closes[b]])
    return rows


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def run(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit(args.idle + args.slowloris + 1024)
    up_port, gw_port = bg._free_port(), bg._free_port()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(args.log, "wb")  # noqa: SIM115 - closed below
    try:
        upstream = [sys.executable, bg.__file__, "upstream", "--port", str(up_port)]
        procs.append(
            subprocess.Popen(bg._pinned(args.other_cpus, upstream), stdout=log, stderr=log)
        )
        bg._wait(f"http://127.0.0.1:{up_port}/health")
        gateway = [
            sys.executable, "-m", "kvgate", "serve", "--policy", args.policy,
            "--endpoint", f"http://127.0.0.1:{up_port}", "--port", str(gw_port),
            "--log-format", "json", "--log-level", "warning",
            "--header-timeout", args.header_timeout,
            "--max-body-bytes", str(args.max_body_bytes),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        procs.append(
            subprocess.Popen(
                bg._pinned(args.gateway_cpus, gateway), stdout=log, stderr=log, env=env
            )
        )
        bg._wait(f"http://127.0.0.1:{gw_port}/ready")
        gw_pid = bg._worker_pid(procs[-1].pid)
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
            "settings": {
                k: getattr(args, k)
                for k in (
                    "rate",
                    "duration",
                    "connections",
                    "policy",
                    "idle",
                    "slowloris",
                    "drip_interval",
                    "body_rate",
                    "header_timeout",
                    "max_body_bytes",
                    "abusers_nice",
                    "gateway_cpus",
                    "other_cpus",
                    "abusers_cpus",
                )
            },
            "gateway_at_start": _proc_sample(gw_pid),
        }
        calm_start, cpu_before = _proc_sample(gw_pid), _children_cpu_s()
        report["without_abuse"] = bg._load_cmd(
            args.other_cpus, via, rate=args.rate, duration=args.duration,
            connections=args.connections,
        )  # fmt: skip
        report["without_abuse"]["usage"] = _usage(calm_start, _proc_sample(gw_pid), cpu_before)
        report["with_abuse"] = asyncio.run(_with_abuse(args, gw_port, gw_pid, via))
        report["gateway_after"] = _proc_sample(gw_pid)
        calm, abused = report["without_abuse"], report["with_abuse"]["load"]
        report["summary"] = {
            "p50_ms": [calm["p50_ms"], abused["p50_ms"]],
            "p99_ms": [calm["p99_ms"], abused["p99_ms"]],
            "errors": [calm["errors"], abused["errors"]],
            "achieved_rps": [calm["achieved_rps"], abused["achieved_rps"]],
            "gateway_cpu_s": [
                calm["usage"]["gateway_cpu_s"],
                report["with_abuse"]["usage"]["gateway_cpu_s"],
            ],
            "load_generator_cpu_s": [
                calm["usage"]["load_generator_cpu_s"],
                report["with_abuse"]["usage"]["load_generator_cpu_s"],
            ],
            "note": "[without abuse, with abuse]",
        }
        return report
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _cpus(text: str) -> set[int]:
    """A taskset list (``2-7,9``) as a set of CPU numbers."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=500.0, help="well-behaved req/s (500)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per load run (30)")
    p.add_argument("--connections", type=int, default=64, help="well-behaved connections (64)")
    p.add_argument("--policy", default="random", help="kvgate serve --policy (random)")
    p.add_argument("--idle", type=int, default=2000, help="idle connections held (2000)")
    p.add_argument("--slowloris", type=int, default=200, help="slowloris connections (200)")
    p.add_argument("--drip-interval", type=float, default=1.0, help="seconds per dripped byte")
    p.add_argument(
        "--body-rate", type=float, default=10.0, help="oversized and nested POSTs/s each"
    )
    p.add_argument("--header-timeout", default="10s", help="kvgate serve --header-timeout")
    p.add_argument("--max-body-bytes", type=int, default=1024 * 1024, help="kvgate serve's limit")
    p.add_argument(
        "--abusers-nice",
        type=int,
        default=0,
        help="nice added to the abusers while the load runs beside them (0; root to undo)",
    )
    p.add_argument("--gateway-cpus", default=None, help="taskset list for the gateway")
    p.add_argument(
        "--abusers-cpus",
        default=None,
        help="taskset list for the abusers (default: unpinned); with the gateway's, their "
        "connections' kernel work lands where a real gateway host would do it",
    )
    p.add_argument("--other-cpus", default=None, help="taskset list for upstream, load, abusers")
    p.add_argument("--log", type=Path, default=Path("/tmp/bench_abuse.log"))
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    p.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args()
    if args.probe is not None:  # the latency probe's own process (see probe())
        print(json.dumps(probe(args.probe, args.duration)))
        return
    if args.other_cpus:  # the abusers run in this process
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, _cpus(args.other_cpus))
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
