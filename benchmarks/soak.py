"""Soak: ``kvgate serve`` at a steady load for ``--minutes`` with replica churn, sampled.

What runs (all real processes on loopback):

* ``kvgate sim`` replicas publishing KV events (small KV caches, so they evict), listed in
  an endpoints file the gateway watches (``--endpoints-file``);
* ``kvgate serve`` with both prefix indexes: the precise scorer (fed by the replicas' KV
  events) and the approximate ``prefix-cache-scorer``, beside the queue and KV-cache
  utilization scorers;
* an open-loop load of chat completions at ``--rate`` req/s from this process: prompts share
  one of ``--prefixes`` system prompts and add a random question, so both indexes keep
  growing, evicting and dropping.

Churn, one step every ``--churn-every`` seconds, in turn: a replica is **added** (started,
then written into the endpoints file), a replica is **removed** (taken out of the file,
then stopped), a replica **fails** (SIGKILL) and **recovers** ``--down-for`` seconds later
(restarted on the same port, so its KV-event stream restarts from seq 0).

Every ``--sample-every`` seconds one CSV row: the gateway's RSS and open fds (from /proc),
the precise index's blocks and entries (``kvgate_kv_index_blocks``/``_entries``), the
approximate index's size (``--approx-metric``; empty when the gateway does not export it),
endpoints in rotation, and the window's requests, errors, p50 and p99. At the end: the CSV,
a plot (matplotlib) and a JSON summary (growth of RSS and fds over the run, every request
accounted for: sent = answered 200 + answered otherwise + failed to connect).

    python benchmarks/soak.py --minutes 1 --out-dir results/soak-1min      # a quick check
    python benchmarks/soak.py --minutes 20 --out-dir results/soak \\
        --plot docs/img/soak.png                                          # the real run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "sim-model"
COLUMNS = (
    "t_s", "rss_mib", "open_fds", "precise_blocks", "precise_entries", "approx_blocks",
    "in_rotation", "replicas", "requests", "errors", "p50_ms", "p99_ms", "event",
)  # fmt: skip


def policy(zmq_port: int, block_size: int) -> str:
    """Both prefix indexes in one profile: the precise one (KV events) and the approximate."""
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    tokenProcessorConfig: {{blockSize: {block_size}}}
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{zmq_port}"}}
- type: prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: precise-prefix-cache-scorer, weight: 2}}
  - {{pluginRef: prefix-cache-scorer, weight: 1}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 1}}
  - {{pluginRef: queue-scorer, weight: 1}}
  - {{pluginRef: max-score-picker}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not http_ok(url):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} (see the log)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s}s")
        time.sleep(0.1)


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """The replicas, the endpoints file the gateway watches, and the gateway."""

    args: argparse.Namespace
    out: Path
    zmq_port: int = field(default_factory=free_port)
    gw_port: int = field(default_factory=free_port)
    replicas: list[Replica] = field(default_factory=list)
    #: every replica ever started, in the file or not yet (stop() stops them all)
    started: list[Replica] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    seed: int = 0

    @property
    def endpoints_file(self) -> Path:
        return self.out / "endpoints.yaml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw_port}"

    def _log(self, name: str) -> Any:
        return open(self.out / f"{name}.log", "ab")

    def start_replica(self, replica: Replica) -> None:
        self.seed += 1
        cmd = [
            sys.executable, "-m", "kvgate", "sim", "--host", "127.0.0.1",
            "--port", str(replica.port), "--model", MODEL, "--speed", str(self.args.sim_speed),
            "--block-size", "16", "--num-gpu-blocks", str(self.args.gpu_blocks),
            "--seed", str(self.seed), "--log-level", "warning",
            "--kv-events-endpoint", f"tcp://127.0.0.1:{self.zmq_port}",
        ]  # fmt: skip
        if all(r is not replica for r in self.started):
            self.started.append(replica)
        with self._log(f"sim-{replica.port}") as log:  # the child keeps its own copy
            replica.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        wait_ok(replica.url + "/health", replica.proc)

    def stop_replica(self, replica: Replica, *, kill: bool = False) -> None:
        proc, replica.proc = replica.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def write_endpoints(self) -> None:
        """Atomically (write, then rename): the watcher never reads half a file."""
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text("".join(f"- {r.url}\n" for r in self.replicas) or "[]\n")
        os.replace(tmp, self.endpoints_file)

    def start(self) -> None:
        for _ in range(self.args.replicas):
            replica = Replica(free_port())
            self.start_replica(replica)
            self.replicas.append(replica)
        self.write_endpoints()
        cmd = [
            sys.executable, "-m", "kvgate", "serve", "--port", str(self.gw_port),
            "--endpoints-file", str(self.endpoints_file),
            "--config-text", policy(self.zmq_port, 16),
            "--log-format", "json", "--log-level", "warning", "--no-request-log",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        with self._log("gateway") as log:
            self.gateway = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=env, start_new_session=True
            )
        wait_ok(self.url + "/ready", self.gateway)

    def stop(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.wait(40)
            if self.gateway.poll() is None:
                self.gateway.kill()
        for replica in self.started:  # also one whose start failed or was cut short
            self.stop_replica(replica)


def proc_sample(pid: int) -> tuple[float, int]:
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return round(rss_kb / 1024, 1), len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url: str, names: list[str]) -> dict[str, float | None]:
    """The sum of each named metric's samples (None when the gateway does not export it)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float | None] = dict.fromkeys(names)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] = (out[name] or 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def take(self) -> tuple[list[float], int]:
        out = (self.latencies, self.errors)
        self.latencies, self.errors = [], 0
        return out


@dataclass
class Totals:
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    connect_errors: int = 0


async def load(
    url: str, rate: float, prefixes: int, seed: int, stop: asyncio.Event, window: Window,
    totals: Totals,
) -> None:  # fmt: skip
    import aiohttp

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]
    systems = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(prefixes)]
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(body: bytes) -> None:
            t0 = time.perf_counter()
            totals.sent += 1
            try:
                async with session.post(
                    url + "/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                totals.connect_errors += 1
                totals.statuses[type(exc).__name__] = totals.statuses.get(type(exc).__name__, 0) + 1
                window.errors += 1
                return
            totals.statuses[str(status)] = totals.statuses.get(str(status), 0) + 1
            if status == 200:
                totals.ok += 1
                window.latencies.append(time.perf_counter() - t0)
            else:
                window.errors += 1

        started, n = time.perf_counter(), 0
        while not stop.is_set():
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            question = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": question},
                ],
                "max_tokens": rng.randint(4, 32),
            }
            task = asyncio.create_task(one(json.dumps(body).encode()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks, return_exceptions=True)


async def churn(cluster: Cluster, every_s: float, down_for_s: float, events: list[str]) -> None:
    """Add, remove, fail-and-recover, in turn; each step logged into ``events``."""
    step = 0
    while True:
        await asyncio.sleep(every_s)
        kind = ("add", "remove", "fail")[step % 3]
        step += 1
        if kind == "add":
            replica = Replica(free_port())
            await asyncio.to_thread(cluster.start_replica, replica)
            cluster.replicas.append(replica)
            cluster.write_endpoints()
            events.append(f"added :{replica.port}")
        elif kind == "remove" and len(cluster.replicas) > 1:
            replica = cluster.replicas.pop(0)
            cluster.write_endpoints()
            # requests in flight there finish; then it stops
            await asyncio.to_thread(cluster.stop_replica, replica)
            events.append(f"removed :{replica.port}")
        elif kind == "fail" and cluster.replicas:
            replica = cluster.replicas[-1]
            cluster.stop_replica(replica, kill=True)
            events.append(f"killed :{replica.port}")
            await asyncio.sleep(down_for_s)
            await asyncio.to_thread(cluster.start_replica, replica)
            events.append(f"recovered :{replica.port}")


async def soak(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    assert cluster.gateway is not None
    gw_pid = cluster.gateway.pid
    metric_names = [
        "kvgate_kv_index_blocks",
        "kvgate_kv_index_entries",
        args.approx_metric,
        "kvgate_endpoint_in_rotation",
    ]
    stop = asyncio.Event()
    window, totals = Window(), Totals()
    events: list[str] = []
    loader = asyncio.create_task(
        load(cluster.url, args.rate, args.prefixes, args.seed, stop, window, totals)
    )
    churner = asyncio.create_task(churn(cluster, args.churn_every, args.down_for, events))
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    warned = False
    csv_path = args.out_dir / "soak.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        while time.monotonic() < end:
            await asyncio.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
            rss, fds = proc_sample(gw_pid)
            try:
                m = await asyncio.to_thread(scrape, cluster.url, metric_names)
            except OSError:
                m = dict.fromkeys(metric_names)
            if m[args.approx_metric] is None and not warned:
                warned = True
                print(
                    f"soak.py: the gateway exports no {args.approx_metric}: the approximate "
                    "index's size is left empty",
                    file=sys.stderr,
                )
            latencies, errors = window.take()
            row = {
                "t_s": round(time.monotonic() - started, 1),
                "rss_mib": rss,
                "open_fds": fds,
                "precise_blocks": m["kvgate_kv_index_blocks"],
                "precise_entries": m["kvgate_kv_index_entries"],
                "approx_blocks": m[args.approx_metric],
                "in_rotation": m["kvgate_endpoint_in_rotation"],
                "replicas": len(cluster.replicas),
                "requests": len(latencies) + errors,
                "errors": errors,
                "p50_ms": pct(latencies, 0.5),
                "p99_ms": pct(latencies, 0.99),
                "event": "; ".join(events),
            }
            events.clear()
            rows.append(row)
            writer.writerow(row)
            f.flush()
    churner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await churner
    stop.set()
    await loader
    return summarize(args, rows, totals, csv_path)


def summarize(
    args: argparse.Namespace, rows: list[dict[str, Any]], totals: Totals, csv_path: Path
) -> dict[str, Any]:
    """Growth between the first and the last quarter of the run, and the request totals."""
    quarter = max(1, len(rows) // 4)
    first, last = rows[:quarter], rows[-quarter:]

    def mean(part: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in part if r[key] is not None]
        return round(sum(values) / len(values), 2) if values else None

    answered_otherwise = sum(v for k, v in totals.statuses.items() if k.isdigit() and k != "200")
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "samples": len(rows),
        "csv": str(csv_path),
        "requests": {
            "sent": totals.sent,
            "ok": totals.ok,
            "answered_otherwise": answered_otherwise,
            "failed_to_connect_or_timed_out": totals.connect_errors,
            "by_status": dict(sorted(totals.statuses.items())),
            "all_accounted": totals.sent == totals.ok + answered_otherwise + totals.connect_errors,
        },
        "first_quarter": {k: mean(first, k) for k in ("rss_mib", "open_fds", "p50_ms", "p99_ms")},
        "last_quarter": {k: mean(last, k) for k in ("rss_mib", "open_fds", "p50_ms", "p99_ms")},
        "rss_max_mib": max((r["rss_mib"] for r in rows), default=None),
        "fds_max": max((r["open_fds"] for r in rows), default=None),
        "precise_blocks_max": max(
            (r["precise_blocks"] for r in rows if r["precise_blocks"] is not None), default=None
        ),
    }


def plot(rows_csv: Path, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(rows_csv) as f:
        rows = list(csv.DictReader(f))

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "None") else float("nan") for r in rows]

    t = [v / 60 for v in col("t_s")]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, col("rss_mib"), label="gateway RSS (MiB)")
    axes[0].legend(loc="upper left")
    fds = axes[0].twinx()
    fds.plot(t, col("open_fds"), color="tab:orange", label="open fds")
    fds.legend(loc="lower right")
    axes[1].plot(t, col("precise_blocks"), label="precise index blocks")
    axes[1].plot(t, col("precise_entries"), label="precise index entries")
    axes[1].plot(t, col("approx_blocks"), label="approximate index blocks")
    axes[1].legend(loc="upper left")
    axes[2].plot(t, col("p50_ms"), label="p50 (ms)")
    axes[2].plot(t, col("p99_ms"), label="p99 (ms)")
    axes[2].legend(loc="upper left")
    axes[3].plot(t, col("replicas"), label="replicas in the file", drawstyle="steps-post")
    axes[3].plot(t, col("in_rotation"), label="in rotation", drawstyle="steps-post")
    axes[3].bar(t, col("errors"), width=0.02, color="tab:red", label="errors per sample")
    axes[3].legend(loc="upper left")
    for when, r in zip(t, rows, strict=True):
        if r["event"]:
            for ax in axes:
                ax.axvline(when, color="grey", alpha=0.2, linewidth=0.8)
    axes[3].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="length of the run (20)")
    p.add_argument("--rate", type=float, default=20.0, help="chat completions per second (20)")
    p.add_argument("--replicas", type=int, default=3, help="replicas at the start (3)")
    p.add_argument("--sim-speed", type=float, default=20.0, help="kvgate sim --speed (20)")
    p.add_argument("--gpu-blocks", type=int, default=512, help="KV blocks per replica (512)")
    p.add_argument("--prefixes", type=int, default=16, help="distinct system prompts (16)")
    p.add_argument("--churn-every", type=float, default=20.0, help="seconds between churn steps")
    p.add_argument("--down-for", type=float, default=5.0, help="seconds a failed replica is down")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument(
        "--approx-metric",
        default="kvgate_prefix_index_blocks",
        help="the gateway's series for the approximate index's size",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("results/soak"))
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: <out-dir>/soak.png)")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(args, args.out_dir)
    try:
        cluster.start()
        summary = asyncio.run(soak(args, cluster))
    finally:
        cluster.stop()
    png = args.plot or args.out_dir / "soak.png"
    title = (
        f"kvgate serve soak: {args.minutes:g} min at {args.rate:g} req/s, churn every "
        f"{args.churn_every:g} s"
    )
    plot(args.out_dir / "soak.csv", png, title)
    summary["plot"] = str(png)
    text = json.dumps(summary, indent=2)
    (args.out_dir / "summary.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
