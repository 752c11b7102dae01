"""Every request accounted for under random faults.

Starts ``--replicas`` ``kvgate sim`` replicas that fail a share of their requests at random
(``--failure-rate``, kinds 429, 500, 503, ``drop``: the connection closes mid-answer, and
``hang``: no answer at all), kills one replica with SIGKILL and starts it again on the same
port every ``--kill-every`` requests (streams on it break off), and puts ``kvgate serve``
(``--log-format json``, a short ``--request-timeout``) in front. Then sends ``--requests``
completions, half of them streamed, ``--concurrency`` at a time, each with a client deadline.

Every request must end in a success or an explicit OpenAI-shaped error (a JSON body with an
``error`` object, or a stream's terminal ``data: {"error": ...}`` event); none may pass its
deadline or lose its connection; and three counts by HTTP status must agree exactly: the
client's, the gateway's ``kvgate_requests_total`` and the request log's lines. Prints one
JSON report and exits 1 when any of that fails::

    python benchmarks/fault_run.py --requests 5000 --out results/fault-run.json

tests/e2e/test_faults.py runs it with ``--requests 600``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from kvgate.bench.procs import (
    BenchError,
    Proc,
    http_ok,
    kvgate_argv,
    wait_in_rotation,
    wait_ready,
)

MODEL = "sim-model"
LOGGER = "kvgate.requests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_argv(port: int, seed: int, args: argparse.Namespace) -> list[str]:
    return kvgate_argv(
        "sim", "--host", "127.0.0.1", "--port", str(port), "--model", MODEL,
        "--speed", str(args.speed), "--seed", str(seed),
        "--failure-rate", str(args.failure_rate), "--failure-kinds", args.failure_kinds,
    )  # fmt: skip


def is_openai_error(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


async def one_request(
    session: aiohttp.ClientSession, url: str, i: int, deadline_s: float
) -> dict[str, Any]:
    """One completion; returns how it ended (status, kind) as the client saw it."""
    stream = i % 2 == 1
    body = {
        "model": MODEL,
        "prompt": f"request {i} " + "word " * (i % 17),
        "max_tokens": 8 + i % 24,
        "stream": stream,
    }
    started = time.monotonic()
    out: dict[str, Any] = {"i": i, "stream": stream}
    try:
        async with asyncio.timeout(deadline_s):
            async with session.post(url + "/v1/completions", json=body) as resp:
                out["status"] = resp.status
                data = await resp.read()
        if resp.status == 200 and stream:
            # a stream that broke off ends as vLLM's do: an error event, then [DONE]
            events = [ln[6:] for ln in data.split(b"\n") if ln.startswith(b"data: ")]
            if any(e.startswith(b'{"error"') and is_openai_error(e) for e in events):
                out["kind"] = "stream_error_event"
            elif events and events[-1] == b"[DONE]":
                out["kind"] = "ok"
            else:
                out["kind"] = "bad_stream"  # neither [DONE] nor an error event
        elif resp.status == 200:
            out["kind"] = "ok" if b'"choices"' in data else "bad_body"
        else:
            out["kind"] = "openai_error" if is_openai_error(data) else "bad_error_body"
    except TimeoutError:
        out["status"], out["kind"] = 0, "client_deadline"
    except aiohttp.ClientError as exc:
        out["status"], out["kind"] = 0, f"connection:{type(exc).__name__}"
    out["seconds"] = time.monotonic() - started
    return out


class Replicas:
    """The simulated replicas; every process ever started is kept, so all are stopped at the end.

    Kills are serialized: one replica is down (or starting again) at a time, so a restart never
    races another for the same port, and a replaced process can never be left running.
    """

    def __init__(self, args: argparse.Namespace, ports: list[int], tmp: Path) -> None:
        self.args = args
        self.ports = ports
        self.tmp = tmp
        self.current: list[Proc] = []
        self.started: list[Proc] = []
        self.kills = 0
        self._lock = asyncio.Lock()

    def start_all(self) -> None:
        for i in range(len(self.ports)):
            self._start(i, f"sim{i}", seed=i)

    def _start(self, slot: int, name: str, seed: int) -> Proc:
        proc = Proc(name, sim_argv(self.ports[slot], seed, self.args), self.tmp / f"{name}.log")
        self.started.append(proc)  # before anything can fail: stop_all() must see it
        if slot < len(self.current):
            self.current[slot] = proc
        else:
            self.current.append(proc)
        return proc

    async def restart(self, rng: random.Random, k: int) -> None:
        """SIGKILL one replica, leave it down ``--down-s``, start it again, wait for /health."""
        async with self._lock:
            victim = rng.randrange(len(self.current))
            self.current[victim].popen.kill()
            self.kills += 1
            await asyncio.to_thread(self.current[victim].stop)  # reaps it, closes its log
            await asyncio.sleep(self.args.down_s)
            proc = self._start(victim, f"sim{victim}-{k}", seed=k)
            url = f"http://127.0.0.1:{self.ports[victim]}/health"
            deadline = time.monotonic() + 60
            while not await asyncio.to_thread(http_ok, url):
                if not proc.alive() or time.monotonic() > deadline:
                    raise BenchError(f"{proc.name} did not come back ({proc.log_path})")
                await asyncio.sleep(0.1)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


async def drive(url: str, args: argparse.Namespace, replicas: Replicas) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    sem = asyncio.Semaphore(args.concurrency)
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    restarts: list[asyncio.Task[None]] = []

    async def task(i: int) -> None:
        try:
            results.append(await one_request(session, url, i, args.deadline_s))
        finally:
            sem.release()

    async with aiohttp.ClientSession(connector=connector) as session:
        pending = []
        for i in range(args.requests):
            # The slot is taken here and given back when the request ends, so this loop waits
            # while --concurrency are in flight and request i starts after i - concurrency
            # ended: the kills fall through the run, not all at its start.
            await sem.acquire()
            if args.kill_every and i and i % args.kill_every == 0:
                restarts.append(asyncio.ensure_future(replicas.restart(rng, i)))
            pending.append(asyncio.ensure_future(task(i)))
        await asyncio.gather(*pending, *restarts)
    return results


def injected_faults(log_paths: list[Path]) -> Counter[str]:
    """The faults the simulators logged (one ``injected fault: KIND`` line each)."""
    faults: Counter[str] = Counter()
    for path in log_paths:
        for m in re.finditer(r"injected fault: (\S+)", path.read_text(errors="replace")):
            faults[m.group(1)] += 1
    return faults


def gateway_counts(metrics_url: str) -> Counter[str]:
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    counts: Counter[str] = Counter()
    for m in re.finditer(r"^kvgate_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        status = re.search(r'status="(\d+)"', m.group(1))
        if status:
            counts[status.group(1)] += int(float(m.group(2)))
    return counts


def log_counts(log_text: str) -> tuple[Counter[str], Counter[str], int]:
    """By status, by error, and how many 200s carry an error (streams that broke off)."""
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    broken_streams = 0
    for line in log_text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == LOGGER:
                statuses[str(record["status"])] += 1
                errors[str(record.get("error"))] += 1
                broken_streams += record["status"] == 200 and record.get("error") is not None
    return statuses, errors, broken_streams


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--failure-rate", type=float, default=0.05)
    p.add_argument("--failure-kinds", default="429,500,503,drop,hang")
    p.add_argument("--kill-every", type=int, default=500, help="0: never kill a replica")
    p.add_argument("--down-s", type=float, default=0.5, help="how long a killed replica stays down")
    p.add_argument("--speed", type=float, default=20.0, help="the simulators' --speed")
    p.add_argument("--request-timeout", default="2s", help="the gateway's --request-timeout")
    p.add_argument("--deadline-s", type=float, default=15.0, help="each request's client deadline")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    p.add_argument("--keep-logs", type=Path, default=None, help="folder for the process logs")
    args = p.parse_args(argv)

    tmp = args.keep_logs or Path(tempfile.mkdtemp(prefix="kvgate-fault-run-"))
    tmp.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(args.replicas)]
    gw_port = free_port()
    gw_argv = ["serve", "--port", str(gw_port), "--log-format", "json", "--seed", str(args.seed)]
    for port in ports:
        gw_argv += ["--endpoint", f"http://127.0.0.1:{port}"]
    gw_argv += ["--request-timeout", args.request_timeout, "--refresh-metrics-interval", "100ms"]
    url = f"http://127.0.0.1:{gw_port}"
    replicas = Replicas(args, ports, tmp)
    gateway: Proc | None = None
    started = time.monotonic()
    try:
        replicas.start_all()
        gateway = Proc("gateway", kvgate_argv(*gw_argv), tmp / "gateway.log")
        wait_ready(
            [
                (s, f"http://127.0.0.1:{port}/health")
                for s, port in zip(replicas.current, ports, strict=True)
            ],
            60,
        )
        wait_ready([(gateway, url + "/ready")], 60)
        # /ready holds once one endpoint is in rotation: start with all of them
        wait_in_rotation(url + "/metrics", args.replicas, 30)
        results = asyncio.run(drive(url, args, replicas))
        wall_s = time.monotonic() - started
        served = gateway_counts(url + "/metrics")
    finally:
        if gateway is not None:
            gateway.stop()  # SIGTERM: drains, flushes the request log
        replicas.stop_all()
    assert gateway is not None
    faults = injected_faults([p.log_path for p in replicas.started])
    logged, errors, broken_streams = log_counts(gateway.log_path.read_text(errors="replace"))
    client = Counter(str(r["status"]) for r in results)
    kinds = Counter(str(r["kind"]) for r in results)
    explicit = {"ok", "openai_error", "stream_error_event"}
    problems = []
    if len(results) != args.requests:
        problems.append(f"{len(results)} results for {args.requests} requests")
    if set(kinds) - explicit:
        problems.append(f"requests without an explicit end: {dict(kinds)}")
    if not client == served == logged:
        problems.append("client, /metrics and request log disagree")
    if kinds["stream_error_event"] != broken_streams:
        problems.append(
            f"{kinds['stream_error_event']} streams ended in an error event, "
            f"{broken_streams} logged as 200 with an error"
        )
    slowest = max((r["seconds"] for r in results), default=0.0)
    report = {
        "requests": args.requests,
        "wall_s": round(wall_s, 1),
        "client_by_status": dict(sorted(client.items())),
        "metrics_by_status": dict(sorted(served.items())),
        "log_by_status": dict(sorted(logged.items())),
        "log_by_error": dict(sorted(errors.items())),
        "client_outcomes": dict(sorted(kinds.items())),
        "slowest_request_s": round(slowest, 2),
        "deadline_s": args.deadline_s,
        "faults_injected": dict(sorted(faults.items())),
        "replica_kills": replicas.kills,
        "ok": not problems,
        "problems": problems,
        "logs": str(tmp),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
