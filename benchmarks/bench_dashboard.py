"""The dashboard's cost: the gateway's latency at a fixed rate with and without a page open.

Runs ``kvgate serve --policy random`` in front of bench_gateway.py's instant upstream, then
bench_gateway.py's open-loop load at ``--rate`` req/s twice: once with no dashboard client,
once with a ``/dashboard/events`` client connected (it reads every snapshot, as a browser
does). The hook feeding the ring runs in both; the difference is what an open page costs.
Prints one JSON report::

    python benchmarks/bench_dashboard.py --rate 500 --duration 10 --gateway-cpus 0 --other-cpus 1

Keep it short on a shared machine: two runs of ``--duration`` seconds plus start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KVGATE = Path(sys.executable).with_name("kvgate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def wait_ok(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered 200")
        time.sleep(0.05)


def load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "bench_gateway.py"), "load", "--url", url]
    cmd += ["--rate", str(args.rate), "--duration", str(args.duration)]
    out = subprocess.run(pinned(args.other_cpus, cmd), capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def watch(url: str, stop: threading.Event, counts: list[int]) -> None:
    """A page left open: read /dashboard/events until ``stop``."""

    async def run() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    counts[0] += 1
                if stop.is_set():
                    return

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500.0, help="req/s (open loop)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--gateway-cpus", help="taskset list for the gateway, e.g. 0")
    parser.add_argument("--other-cpus", help="taskset list for upstream, load and the page")
    args = parser.parse_args()

    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen(
        pinned(
            args.other_cpus,
            [sys.executable, str(HERE / "bench_gateway.py"), "upstream", "--port", str(up_port)],
        )
    )
    gateway = subprocess.Popen(
        pinned(
            args.gateway_cpus,
            [
                str(KVGATE),
                "serve",
                *("--port", str(gw_port), "--policy", "random", "--no-request-log"),
                *("--endpoint", f"http://127.0.0.1:{up_port}"),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{gw_port}"
    try:
        wait_ok(base + "/ready")
        without = load(base + "/v1/chat/completions", args)
        stop, counts = threading.Event(), [0]
        page = threading.Thread(target=watch, args=(base + "/dashboard/events", stop, counts))
        page.start()
        try:
            with_page = load(base + "/v1/chat/completions", args)
        finally:
            stop.set()
            page.join(5)
        report = {
            "rate": args.rate,
            "duration_s": args.duration,
            "without_page": without,
            "with_page": with_page,
            "snapshots_received": counts[0],
            "added_p50_ms": round(with_page["p50_ms"] - without["p50_ms"], 3),
            "added_p99_ms": round(with_page["p99_ms"] - without["p99_ms"], 3),
        }
        print(json.dumps(report, indent=2))
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
