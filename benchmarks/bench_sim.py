"""How many streams and requests one ``kvgate sim`` process serves, and how closely clients
see the latency model.

Usage (results for docs/PERFORMANCE.md, "Simulator")::

    .venv/bin/python benchmarks/bench_sim.py                 # full run, ~2 minutes
    .venv/bin/python benchmarks/bench_sim.py --quick         # smaller sweep

The simulator is pinned to one core (``taskset -c 0``) and the load generators to the
others (``--client-cores``; on a 2-core machine shared with other work, pin both to one
core: ``taskset -c 1 ... --sim-core 1 --client-cores 1 --workers 1``). Three scenarios:

1. **concurrency**: C streams start together (C = 1 … 256), 16-token prompts, 64 tokens each,
   profile qwen3-0.6b-h100 at real time (C = 1: ten requests one after another, 0.5 s
   apart). Once all are decoding, every step is a decode of batch C, so the model's ITL is
   ``d0 + d1·C``.
2. **rate**: open-loop arrivals at R requests/s (short requests: 32-token prompts, 8 tokens
   each, streaming) for a few seconds each, on a profile with a faster decode (so the
   modelled GPU, not the process, sets the limit only far above 1000 req/s), while /metrics
   is scraped every 50 ms as an endpoint picker does. ``sim_cpu_ms_per_request`` (CPU time of
   the simulator process / requests) gives the capacity of one fully used core, which holds
   even when the machine is shared; the timing drift needs an otherwise idle machine.
3. **long**: open-loop arrivals at R requests/s of long text prompts (an 8000-token prefix
   shared by a group, plus a 100-token question of its own; half completions, half chat with
   the prefix as the system message; 16 tokens out, streaming), profile qwen3-0.6b-h100 at
   real time. The simulator tokenizes them, so this shows whether tokenization keeps its
   engine on the modelled schedule: ``engine_lag_s`` (``kvgate_sim_schedule_lag_seconds``)
   and the TTFT drift.

For every request the engine records what the model says a client should see: the planned
end of the step that produced each token, the model's TTFT counting from the request's
arrival (the kernel's receive stamp of its first bytes; ``/sim/stats``). The client measures
the same TTFT and inter-token gaps on the wire, its clock starting as it writes the request's
bytes (pre-built, on a connection opened before) and each token timed by the kernel's
receive stamp on the client's socket. ``drift`` is client mean / model mean - 1: the time
the process (HTTP, event loop, CPU contention) and the loopback add to the model.
``intake_ms`` is the mean time from arrival to the engine (waking, reading, parsing,
tokenizing): inside the model's TTFT, absorbed into the prefill when the engine was idle,
else a request taken in after a step boundary waits for the next one (as vLLM's would
behind its API server). ``sim_emit_*`` are the simulator's own view of its token writes
against the model and the leads it completes steps with (docs/sim.md).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kvgate.sim.wire import SO_TIMESTAMPNS, kernel_arrival

ROOT = Path(__file__).resolve().parent.parent

FAST_PROFILE = {
    "name": "bench-fast-decode",
    "description": "qwen3-0.6b-h100 prefill with a vLLM-like decode cost (CUDA graphs): d1 = 0.02 ms per sequence",
    "block_size": 16,
    "num_gpu_blocks": 37246,
    "max_num_seqs": 256,
    "max_num_batched_tokens": 8192,
    "max_model_len": 40960,
    "latency": {
        "prefill_base_ms": 3.655,
        "prefill_ms_per_token": 0.004319,
        "prefill_ms_per_token_sq": 2.603e-07,
        "cached_base_ms": 0.5886,
        "cached_ms_per_token": 0.0013,
        "decode_base_ms": 3.662,
        "decode_ms_per_seq": 0.02,
    },
}


#: Requests at concurrency 1, 0.5 s apart (64 tokens at the model's 4 ms ITL take 0.26 s).
ROUNDS_AT_ONE = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_sim(args: list[str], core: int | None, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "kvgate", "sim", "--port", str(port), "--model", "bench", *args]
    if core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sim did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    # One request first: the process's first one pays for cold code paths and caches.
    warm = json.dumps({"model": "bench", "prompt": [1000, 1001], "max_tokens": 2}).encode()
    post = urllib.request.Request(
        url + "/v1/completions", warm, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(post, timeout=10) as resp:
        resp.read()
    return proc, url


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load generator (runs in worker processes) --------------------------------------------------


# The load generator speaks HTTP/1.1 itself over keep-alive sockets, with each request's bytes
# built before its send time: the clock starts as the bytes are written, so what the generator
# spends (aiohttp's client costs ~0.5 ms per request here in building the request and ~0.15 ms
# in reading the first line) is not counted as the simulator's drift. Each token is timed by
# the kernel's receive stamp of the segment that carried it (SO_TIMESTAMPNS, read with
# recvmsg), not by when this process got round to reading it: with hundreds of streams two
# generator processes read them one after another, which is the client's delay, not the
# server's (the simulator's own transport reads the stamps the same way, kvgate.sim.wire).
# The read time is kept too (``client_read_delay_ms``). Times are on ``time.monotonic()``.

_CMSG = socket.CMSG_SPACE(16)


class WireConn:
    """A client connection whose reads carry the kernel's receive stamps (monotonic clock)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.base = 0  # absolute stream offset of buf[0]
        self.stamps: list[tuple[int, float]] = []  # (absolute end offset of a read, its stamp)
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def connect(cls, host: str, port: int) -> WireConn:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if SO_TIMESTAMPNS is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return cls(sock)

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, _CMSG)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, anc = b"", []
            stamp = kernel_arrival(anc)
            if stamp is None:
                stamp = time.monotonic()
            if not data:
                self.eof = True
                self.loop.remove_reader(self.sock.fileno())
                break
            self.buf += data
            self.stamps.append((self.base + len(self.buf), stamp))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _fill(self) -> None:
        if self.eof:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.waiter = self.loop.create_future()
        await self.waiter

    def _take(self, n: int) -> tuple[bytes, float]:
        """The next n bytes and the stamp of the read that brought the last of them."""
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.base += n
        end = self.base
        i = 0
        while self.stamps[i][0] < end:
            i += 1
        stamp = self.stamps[i][1]
        del self.stamps[: i + 1 if self.stamps[i][0] == end else i]
        return data, stamp

    async def readline(self) -> tuple[bytes, float]:
        while (i := self.buf.find(b"\n")) < 0:
            await self._fill()
        return self._take(i + 1)

    async def readexactly(self, n: int) -> tuple[bytes, float]:
        while len(self.buf) < n:
            await self._fill()
        return self._take(n)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def close(self) -> None:
        if not self.eof:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _request_bytes(host: str, port: int, body: dict[str, Any]) -> bytes:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _stream(conn: WireConn, request: bytes) -> dict[str, Any]:
    """Send one streaming request and time every token chunk (chunked SSE, as vLLM sends)."""
    times: list[float] = []
    start = time.monotonic()
    await conn.send(request)
    status = int((await conn.readline())[0].split()[1])
    headers: dict[bytes, bytes] = {}
    while (line := (await conn.readline())[0]) not in (b"\r\n", b""):
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if status != 200 or headers.get(b"transfer-encoding") != b"chunked":
        await conn.readexactly(int(headers.get(b"content-length", b"0")))
        return {"ok": False, "status": status}
    first_read = 0.0
    while True:
        size = int((await conn.readline())[0].split(b";")[0], 16)
        if size == 0:
            await conn.readline()
            break
        chunk, stamp = await conn.readexactly(size + 2)
        # (a chat stream's first chunk carries only the role, in the same write as the
        # first token: not a token of its own)
        tokens = chunk.count(b"data: {") - chunk.count(b'"role":"assistant"')
        if tokens and not times:
            first_read = time.monotonic()
        times.extend([stamp] * tokens)
    if not times:
        return {"ok": False, "error": "no tokens"}
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "ok": True,
        "ttft": times[0] - start,
        "read_delay": first_read - times[0],
        "gaps": gaps,
        "tokens": len(times),
    }


async def _run_plan(
    url: str, plan: list[tuple[float, dict[str, Any]]], t0: float
) -> list[dict[str, Any]]:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    # Open (and keep alive) the connections before the clock starts, so TTFT measures the
    # server, not TCP setup; one per request in flight, more opened only if needed.
    pool: list[WireConn] = list(
        await asyncio.gather(
            *(WireConn.connect(host, int(port)) for _ in range(min(len(plan), 256)))
        )
    )

    async def one(offset: float, body: dict[str, Any]) -> dict[str, Any]:
        request = _request_bytes(host, int(port), body)
        delay = t0 + offset - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # How late the load generator itself sends the request (its own CPU starvation).
        send_lag = max(0.0, time.time() - (t0 + offset))
        conn = pool.pop() if pool else await WireConn.connect(host, int(port))
        try:
            result = await _stream(conn, request)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            conn.close()  # counted, not raised: the benchmark reports errors
            result = {"ok": False, "error": repr(exc)}
        else:
            pool.append(conn)
        result["send_lag"] = send_lag
        return result

    results = list(await asyncio.gather(*(one(o, b) for o, b in plan)))
    for conn in pool:
        conn.close()
    return results


def _worker(
    url: str, plan: list[tuple[float, dict[str, Any]]], t0: float, cores: list[int], out: Any
) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(_run_plan(url, plan, t0)))


def run_load(
    url: str, plan: list[tuple[float, dict[str, Any]]], workers: int, cores: list[int]
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.time() + 1.5  # every worker is up before the first request is due
    shards = [plan[i::workers] for i in range(workers)]
    procs = [
        ctx.Process(target=_worker, args=(url, shard, t0, cores, queue))
        for shard in shards
        if shard
    ]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    for _ in procs:
        results.extend(queue.get())
    for p in procs:
        p.join()
    return results


# --- scenarios ------------------------------------------------------------------------------------


def prompt_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 40000) for _ in range(n)]


def summarise(
    results: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    ok = [r for r in results if r["ok"]]
    gaps = [g for r in ok for g in r["gaps"]]
    n_ttft = after["model_ttft_count"] - before["model_ttft_count"]
    n_itl = after["model_itl_count"] - before["model_itl_count"]
    model_ttft = (after["model_ttft_s_sum"] - before["model_ttft_s_sum"]) / max(1, n_ttft)
    model_itl = (after["model_itl_s_sum"] - before["model_itl_s_sum"]) / max(1, n_itl)
    # (.get: a simulator from before the intake counters, for before/after runs)
    n_intake = after.get("intake_count", 0) - before.get("intake_count", 0)
    intake = (after.get("intake_s_sum", 0.0) - before.get("intake_s_sum", 0.0)) / max(1, n_intake)
    client_ttft = statistics.fmean(r["ttft"] for r in ok) if ok else float("nan")
    client_itl = statistics.fmean(gaps) if gaps else float("nan")
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_ms": round(client_ttft * 1000, 2),
        "model_ttft_ms": round(model_ttft * 1000, 2),
        "ttft_drift_pct": round((client_ttft / model_ttft - 1) * 100, 2) if model_ttft else None,
        # HTTP receipt -> engine (read, parse, tokenize): inside the model's TTFT, absorbed
        # into the prefill when the engine was idle, else the request may miss a step.
        "intake_ms": round(intake * 1000, 3),
        "itl_ms": round(client_itl * 1000, 3),
        "model_itl_ms": round(model_itl * 1000, 3),
        "itl_drift_pct": round((client_itl / model_itl - 1) * 100, 2) if model_itl else None,
        "itl_p99_ms": round(sorted(gaps)[int(len(gaps) * 0.99)] * 1000, 2) if gaps else None,
        # When this process read the first token, after the kernel received it (not counted).
        "client_read_delay_ms": round(statistics.fmean(r["read_delay"] for r in ok) * 1000, 3)
        if ok
        else None,
        "client_send_lag_ms": round(
            statistics.fmean(r.get("send_lag", 0.0) for r in results) * 1000, 1
        ),
        "engine_lag_s": round(after["lag_s"] - before["lag_s"], 3),
        "engine_lag_events": after["lag_events"] - before["lag_events"],
        "engine_lag_max_ms": round(after["lag_s_max"] * 1000, 1),  # over the process's life
        # The simulator's own view: mean error of its token writes against the model, and
        # the lead it completes steps with to cancel it (at the end of the run).
        "sim_emit_error_ms": round(
            (after.get("emit_error_s_sum", 0.0) - before.get("emit_error_s_sum", 0.0))
            / max(1, after.get("emit_count", 0) - before.get("emit_count", 0))
            * 1000,
            3,
        ),
        "sim_emit_first_error_ms": round(
            (after.get("emit_first_error_s_sum", 0.0) - before.get("emit_first_error_s_sum", 0.0))
            / max(1, after.get("emit_first_count", 0) - before.get("emit_first_count", 0))
            * 1000,
            3,
        ),
        "sim_emit_lead_ms": round(after.get("emit_lead_s", 0.0) * 1000, 3),
        "sim_emit_lead_first_ms": round(after.get("emit_lead_first_s", 0.0) * 1000, 3),
        "engine_late_mean_ms": round(
            (after["late_s_sum"] - before["late_s_sum"])
            / max(1, after["steps"] - before["steps"])
            * 1000,
            3,
        ),
    }


def measured_run(
    proc: subprocess.Popen[bytes],
    url: str,
    plan: list[tuple[float, dict[str, Any]]],
    workers: int,
    client_cores: list[int],
    *,
    scrape_metrics: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], float, float]:
    """Run ``plan`` against the simulator: (results, /sim/stats before, after, wall s, sim CPU s).

    The wall time leaves out run_load's 1.5 s start-up delay. With ``scrape_metrics`` a thread
    scrapes /metrics every 50 ms meanwhile, as an endpoint picker would: part of the load.
    """
    before = http_json(url + "/sim/stats")
    cpu0 = cpu_seconds(proc.pid)
    wall0 = time.monotonic()
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(0.05):
            try:
                with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                    resp.read()
            except OSError:  # a starved replica; its latency figures show it
                pass

    scraper = threading.Thread(target=scrape, daemon=True) if scrape_metrics else None
    if scraper is not None:
        scraper.start()
    results = run_load(url, plan, workers, client_cores)
    wall = time.monotonic() - wall0 - 1.5
    stop.set()
    if scraper is not None:
        scraper.join()
    after = http_json(url + "/sim/stats")
    return results, before, after, wall, cpu_seconds(proc.pid) - cpu0


def concurrency_sweep(
    levels: list[int],
    max_tokens: int,
    sim_core: int | None,
    client_cores: list[int],
    workers: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    from kvgate.sim.profiles import load_profile

    model = load_profile("qwen3-0.6b-h100").latency
    proc, url = start_sim(["--profile", "qwen3-0.6b-h100"], sim_core, tmp / "sim-concurrency.log")
    rows = []
    try:
        rng = random.Random(1)
        for c in levels:
            # One stream is one sample: take ROUNDS_AT_ONE of them, one after another.
            rounds = ROUNDS_AT_ONE if c == 1 else 1
            plan = [
                (k * 0.5, {"model": "bench", "prompt": prompt_ids(rng, 16),
                           "max_tokens": max_tokens, "ignore_eos": True, "stream": True})
                for k in range(rounds)
                for _ in range(c)
            ]  # fmt: skip
            results, before, after, wall, cpu = measured_run(
                proc, url, plan, min(workers, c), client_cores
            )
            row = {"concurrency": c, **summarise(results, before, after)}
            row["formula_itl_ms"] = round(model.decode_step_ms(c), 3)
            row["sim_cpu_pct"] = round(cpu / wall * 100, 1)
            tokens = sum(r.get("tokens", 0) for r in results)
            row["sim_cpu_us_per_token"] = round(cpu / max(1, tokens) * 1e6, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def rate_sweep(
    rates: list[int],
    duration_s: float,
    sim_core: int | None,
    client_cores: list[int],
    workers: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    profile = tmp / "bench-fast.json"
    profile.write_text(json.dumps(FAST_PROFILE))
    proc, url = start_sim(["--profile", str(profile)], sim_core, tmp / "sim-rate.log")
    rows = []
    try:
        rng = random.Random(2)
        for rate in rates:
            n = int(rate * duration_s)
            plan = [
                (i / rate, {"model": "bench", "prompt": prompt_ids(rng, 32), "max_tokens": 8,
                            "ignore_eos": True, "stream": True})
                for i in range(n)
            ]  # fmt: skip
            results, before, after, wall, cpu = measured_run(
                proc, url, plan, workers, client_cores, scrape_metrics=True
            )
            ok = sum(1 for r in results if r["ok"])
            row = {
                "rate_rps": rate,
                "achieved_rps": round(ok / wall, 1),
                **summarise(results, before, after),
            }
            row["sim_cpu_pct"] = round(cpu / wall * 100, 1)
            row["sim_cpu_ms_per_request"] = round(cpu / max(1, len(results)) * 1000, 3)
            # What one fully used core could serve at this CPU cost per request.
            row["one_core_capacity_rps"] = round(len(results) / cpu) if cpu else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def long_prompt_plan(
    rng: random.Random, seed: int, rate: float, duration_s: float, groups: int
) -> list[tuple[float, dict[str, Any]]]:
    """8000-token prefixes (new ones for every call), one per group, each request one of them
    plus a 100-token question; every other request goes to /v1/chat/completions."""
    from kvgate.bench.workloads import TextGen

    gen = TextGen(seed)
    prefixes = [gen.text(8000) for _ in range(groups)]
    plan: list[tuple[float, dict[str, Any]]] = []
    for i in range(int(rate * duration_s)):
        prefix = prefixes[i % groups]
        question = gen.text(100)
        body: dict[str, Any] = {"model": "bench", "max_tokens": 16, "ignore_eos": True,
                                "stream": True}  # fmt: skip
        if i % 2:
            body["messages"] = [
                {"role": "system", "content": prefix},
                {"role": "user", "content": question.lstrip()},
            ]
        else:
            body["prompt"] = prefix + question
        plan.append((i / rate + rng.uniform(0, 0.5 / rate), body))
    return plan


def long_prompt_sweep(
    rates: list[float],
    duration_s: float,
    sim_core: int | None,
    client_cores: list[int],
    workers: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    proc, url = start_sim(["--profile", "qwen3-0.6b-h100"], sim_core, tmp / "sim-long.log")
    rows = []
    try:
        rng = random.Random(3)
        for k, rate in enumerate(rates):
            plan = long_prompt_plan(rng, 100 + k, rate, duration_s, groups=4)
            results, before, after, wall, cpu = measured_run(proc, url, plan, workers, client_cores)
            row = {"rate_rps": rate, **summarise(results, before, after)}
            row["sim_cpu_pct"] = round(cpu / wall * 100, 1)
            row["sim_cpu_ms_per_request"] = round(cpu / max(1, len(results)) * 1000, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sim-core", type=int, default=0, help="core for the simulator (taskset -c)"
    )
    parser.add_argument(
        "--client-cores",
        default="",
        help="cores for the load generators, e.g. 1 (default: all but the sim's)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--only", choices=("concurrency", "rate", "long"), default=None)
    parser.add_argument("--rates", default=None, help="comma list of request rates")
    parser.add_argument(
        "--long-rates", default=None, help="comma list of request rates for long prompts"
    )
    args = parser.parse_args()
    ncpu = os.cpu_count() or 1
    client_cores = [int(c) for c in args.client_cores.split(",") if c] or [
        c for c in range(ncpu) if c != args.sim_core
    ]
    levels = [1, 32, 256] if args.quick else [1, 16, 64, 128, 256]
    rates = [250, 500] if args.quick else [100, 250, 500, 750]
    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
    long_rates = [10.0] if args.quick else [5.0, 10.0, 20.0]
    if args.long_rates:
        long_rates = [float(r) for r in args.long_rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as d:
        tmp = Path(d)
        result: dict[str, Any] = {
            "machine": {
                "cpus": ncpu,
                "sim_core": args.sim_core,
                "client_cores": client_cores,
                "load_avg_at_start": os.getloadavg(),
            },
        }
        if args.only in (None, "concurrency"):
            result["concurrency"] = concurrency_sweep(
                levels, 32 if args.quick else 64, args.sim_core, client_cores, args.workers, tmp
            )
        if args.only in (None, "rate"):
            result["rate"] = rate_sweep(
                rates, 4.0 if args.quick else 6.0, args.sim_core, client_cores, args.workers, tmp
            )
        if args.only in (None, "long"):
            result["long"] = long_prompt_sweep(
                long_rates, 4.0 if args.quick else 6.0, args.sim_core, client_cores,
                args.workers, tmp,
            )  # fmt: skip
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
