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

from kvgate.bench.procs import Proc, kvgate_argv, wait_ready

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


async def drive(
    url: str, args: argparse.Namespace, sims: list[Proc], ports: list[int], tmp: Path
) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    sem = asyncio.Semaphore(args.concurrency)
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    restarts: list[asyncio.Task[None]] = []

    async def restart(k: int) -> None:
        victim = rng.randrange(len(sims))
        sims[victim].popen.kill()
        await asyncio.to_thread(sims[victim].stop)  # reaps it and closes its log
        await asyncio.sleep(args.down_s)
        sims[victim] = Proc(
            f"sim{victim}-{k}", sim_argv(ports[victim], k, args), tmp / f"sim{victim}-{k}.log"
        )

    async def task(i: int) -> None:
        async with sem:
            results.append(await one_request(session, url, i, args.deadline_s))

    async with aiohttp.ClientSession(connector=connector) as session:
        pending = []
        for i in range(args.requests):
            if args.kill_every and i and i % args.kill_every == 0:
                restarts.append(asyncio.ensure_future(restart(i)))
            await sem.acquire()  # keep at most --concurrency started; release at once below
            sem.release()
            pending.append(asyncio.ensure_future(task(i)))
        await asyncio.gather(*pending, *restarts)
    return results


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
    sims = [
        Proc(f"sim{i}", sim_argv(port, i, args), tmp / f"sim{i}.log")
        for i, port in enumerate(ports)
    ]
    gw_port = free_port()
    gw_argv = ["serve", "--port", str(gw_port), "--log-format", "json", "--seed", str(args.seed)]
    for port in ports:
        gw_argv += ["--endpoint", f"http://127.0.0.1:{port}"]
    gw_argv += ["--request-timeout", args.request_timeout, "--refresh-metrics-interval", "100ms"]
    gateway = Proc("gateway", kvgate_argv(*gw_argv), tmp / "gateway.log")
    url = f"http://127.0.0.1:{gw_port}"
    started = time.monotonic()
    try:
        wait_ready(
            [(s, f"http://127.0.0.1:{port}/health") for s, port in zip(sims, ports, strict=True)],
            60,
        )
        wait_ready([(gateway, url + "/ready")], 60)
        results = asyncio.run(drive(url, args, sims, ports, tmp))
        wall_s = time.monotonic() - started
        served = gateway_counts(url + "/metrics")
    finally:
        gateway.stop()  # SIGTERM: drains, flushes the request log
        for sim in sims:
            sim.stop()
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
        "replica_kills": args.requests // args.kill_every if args.kill_every else 0,
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
