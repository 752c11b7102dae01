"""Fit the simulator's ``smollm2-cpu`` profile from real vLLM on this machine, and compare.

Two modes (both start their own replicas with kvgate's launcher and stop them at the end)::

    # measure real vLLM (one replica pinned to one core, like each replica of `kvgate up`)
    # and write src/kvgate/data/sim-profiles/smollm2-cpu.json
    .venv/bin/python benchmarks/fit_smollm2_cpu.py fit

    # the same workload and routing against 2 real replicas and 2 simulated ones
    # (--profile smollm2-cpu); prints TTFT p50 / ITL p50 for both and their ratio
    .venv/bin/python benchmarks/fit_smollm2_cpu.py compare

What ``fit`` measures, streaming, client side, each point the median of ``--repeats``:

* prefill: time to first token of a fresh prompt of n tokens (token-id prompts, so n is
  exact), for n in 32..1536 -> ``a + b·n + c·n²``;
* cached prefix: the same prompt again (vLLM recomputes only the last partial block, the
  rest is a cache hit) -> ``e0 + e1·cached`` on top of the prefill of the new tokens;
* decode: mean inter-token gap of B concurrent streams, B in 1..16 -> ``d0 + d1·B``.

Client-side times include vLLM's HTTP, tokenizer and detokenizer work, which the simulator
then reproduces as part of its step time; the HTTP overhead of the simulator itself is
small (about a millisecond) next to CPU step times of tens of milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from kvgate.engines import EngineConfig, Supervisor, plan_launch, resolve_model

REPO = Path(__file__).resolve().parents[1]
PROFILE_PATH = REPO / "src" / "kvgate" / "data" / "sim-profiles" / "smollm2-cpu.json"
MODEL = "smollm2"
BLOCK = 32
KV_BYTES = 1 << 30  # what `kvgate up` gives each CPU replica by default
VOCAB_LOW, VOCAB_HIGH = 1000, 40000  # plain word-piece ids, far from special tokens


class CpuProbe:
    """CPU time (ns) used by every thread of a replica's process group.

    On a machine shared with other work, wall-clock latencies measure the scheduler as much
    as vLLM. A replica pinned to one core with OMP_NUM_THREADS=1 does its work on that core
    alone, so the CPU time its threads use for a request is what the request takes on an
    idle core. /proc/<pid>/task/<tid>/schedstat gives it in nanoseconds.
    """

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.idle_ns_per_s = 0.0

    def pids(self) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.pgid:
                    out.append(int(entry.name))
        return out

    def read(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return total

    def calibrate_idle(self, seconds: float = 3.0) -> None:
        """CPU the idle replica burns anyway (polling threads), subtracted from every delta."""
        t0, c0 = time.perf_counter(), self.read()
        time.sleep(seconds)
        self.idle_ns_per_s = (self.read() - c0) / (time.perf_counter() - t0)

    def busy_ms(self, cpu0: int, cpu1: int, wall_s: float) -> float:
        return max(0.0, (cpu1 - cpu0 - self.idle_ns_per_s * wall_s) / 1e6)


@dataclass
class StreamResult:
    ttft_ms: float
    itl_ms: list[float]
    cached_tokens: int
    prompt_tokens: int
    #: CPU-time equivalents (None without a probe): to the first token, and from the first
    #: token to the last.
    cpu_ttft_ms: float | None = None
    cpu_decode_ms: float | None = None
    cpu_marks: tuple[int, int, int] = (0, 0, 0)
    wall_marks: tuple[float, float, float] = (0.0, 0.0, 0.0)


async def stream_completion(
    session: aiohttp.ClientSession,
    url: str,
    prompt: list[int],
    max_tokens: int,
    probe: CpuProbe | None = None,
) -> StreamResult:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    cpu0 = probe.read() if probe else 0
    start = time.perf_counter()
    stamps: list[float] = []
    cpu_first = 0
    usage: dict[str, Any] = {}
    async with session.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices"):
                stamps.append(time.perf_counter())
                if probe and len(stamps) == 1:
                    cpu_first = probe.read()
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    cpu_end = probe.read() if probe else 0
    ttft = (stamps[0] - start) * 1000 if stamps else float("nan")
    itl = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    details = usage.get("prompt_tokens_details") or {}
    result = StreamResult(
        ttft, itl, int(details.get("cached_tokens") or 0), int(usage.get("prompt_tokens", 0))
    )
    if probe and stamps:
        result.cpu_ttft_ms = probe.busy_ms(cpu0, cpu_first, stamps[0] - start)
        result.cpu_decode_ms = probe.busy_ms(cpu_first, cpu_end, end - stamps[0])
        result.cpu_marks = (cpu0, cpu_first, cpu_end)
        result.wall_marks = (start, stamps[0], end)
    return result


def fresh_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(n)]


async def measure(url: str, repeats: int, seed: int, probe: CpuProbe, clock: str) -> dict[str, Any]:
    """Prefill, cached-prefix and decode points; ``clock`` picks wall or CPU-time figures."""
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=600)
    use_cpu = clock == "cpu"
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(2):  # warm-up: first requests pay one-off costs
            await stream_completion(session, url, fresh_prompt(rng, 64), 4)
        prefill: list[tuple[int, float]] = []
        cached: list[tuple[int, int, float]] = []
        wall: dict[str, list[Any]] = {"prefill": [], "cached": [], "decode": []}
        for n in (32, 128, 256, 512, 1024, 1536):
            cold: list[float] = []
            warm: list[tuple[float, int]] = []
            cold_wall: list[float] = []
            warm_wall: list[float] = []
            for _ in range(repeats):
                prompt = fresh_prompt(rng, n)
                r1 = await stream_completion(session, url, prompt, 1, probe)
                r2 = await stream_completion(session, url, prompt, 1, probe)
                cold.append((r1.cpu_ttft_ms or 0.0) if use_cpu else r1.ttft_ms)
                warm.append(((r2.cpu_ttft_ms or 0.0) if use_cpu else r2.ttft_ms, r2.cached_tokens))
                cold_wall.append(r1.ttft_ms)
                warm_wall.append(r2.ttft_ms)
            prefill.append((n, statistics.median(cold)))
            hit = int(statistics.median(c for _, c in warm))
            cached.append((n, hit, statistics.median(t for t, _ in warm)))
            wall["prefill"].append((n, statistics.median(cold_wall)))
            wall["cached"].append((n, hit, statistics.median(warm_wall)))
            print(
                f"  prefill n={n:5d}: cold {prefill[-1][1]:8.1f} ms, hit ({hit} cached) "
                f"{cached[-1][2]:7.1f} ms  [{clock}; wall {wall['prefill'][-1][1]:.0f} / "
                f"{wall['cached'][-1][2]:.0f} ms]",
                flush=True,
            )
        decode: list[tuple[int, float]] = []
        for batch in (1, 2, 4, 8, 16):
            steps: list[float] = []
            gaps: list[float] = []
            for _ in range(max(1, repeats - 1)):
                results = await asyncio.gather(
                    *(
                        stream_completion(session, url, fresh_prompt(rng, 16), 48, probe)
                        for _ in range(batch)
                    )
                )
                # Steady decode: from the last first token to the first end every stream is
                # in the batch; CPU time over that window / steps in it = one step.
                first = max(results, key=lambda r: r.wall_marks[1])
                last = min(results, key=lambda r: r.wall_marks[2])
                window_s = last.wall_marks[2] - first.wall_marks[1]
                n_steps = max(1, round(window_s * 1000 / statistics.median(last.itl_ms)))
                cpu_ms = probe.busy_ms(first.cpu_marks[1], last.cpu_marks[2], window_s)
                steps.append(cpu_ms / n_steps)
                for r in results:
                    gaps.extend(r.itl_ms[4:-2] or r.itl_ms)
            wall_step = statistics.median(gaps)
            decode.append((batch, statistics.median(steps) if use_cpu else wall_step))
            wall["decode"].append((batch, wall_step))
            print(
                f"  decode batch={batch:3d}: {decode[-1][1]:7.2f} ms/step "
                f"[{clock}; wall {wall_step:.1f}]",
                flush=True,
            )
    return {"prefill": prefill, "cached": cached, "decode": decode, "wall": wall}


def fit(points: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    n = np.array([p[0] for p in points["prefill"]], dtype=float)
    t = np.array([p[1] for p in points["prefill"]], dtype=float)
    # Relative least squares (weights 1/t) so short prompts count as much as long ones.
    design = np.stack([np.ones_like(n), n, n * n], axis=1) / t[:, None]
    a, b, c = np.linalg.lstsq(design, np.ones_like(t), rcond=None)[0]
    a, c = max(float(a), 0.0), max(float(c), 0.0)

    def prefill_ms(x: float) -> float:
        return a + float(b) * x + c * x * x

    ctx = np.array([p[1] for p in points["cached"]], dtype=float)
    new = np.array([p[0] - p[1] for p in points["cached"]], dtype=float)
    extra = np.array([p[2] for p in points["cached"]], dtype=float) - np.array(
        [prefill_ms(x) for x in new]
    )
    if len(ctx) >= 2:
        e1, e0 = np.polyfit(ctx, extra, 1)
    else:  # one point: all of the extra cost in the per-request base
        e1, e0 = 0.0, float(extra.mean())
    e0, e1 = max(float(e0), 0.0), max(float(e1), 0.0)
    bsz = np.array([p[0] for p in points["decode"]], dtype=float)
    step = np.array([p[1] for p in points["decode"]], dtype=float)
    d1, d0 = np.polyfit(bsz, step, 1)
    latency = {
        "prefill_base_ms": round(a, 4),
        "prefill_ms_per_token": round(float(b), 7),
        "prefill_ms_per_token_sq": float(f"{c:.4g}"),
        "cached_base_ms": round(e0, 4),
        "cached_ms_per_token": round(e1, 7),
        "decode_base_ms": round(float(d0), 4),
        "decode_ms_per_seq": round(max(float(d1), 0.0), 5),
        "decode_ms_per_context_token": 0.0,
        "offload_load_ms_per_block": 0.0,
    }

    def rel(model: float, real: float) -> float:
        return abs(model - real) / real

    quality = {
        "prefill_max_rel_err": round(
            max(rel(prefill_ms(x), y) for x, y in zip(n, t, strict=True)), 3
        ),
        "cached_prefix_max_rel_err": round(
            max(
                rel(prefill_ms(nw) + e0 + e1 * cx, p[2])
                for nw, cx, p in zip(new, ctx, points["cached"], strict=True)
            ),
            3,
        ),
        "decode_max_rel_err": round(
            max(rel(float(d0) + float(d1) * x, y) for x, y in zip(bsz, step, strict=True)), 3
        ),
    }
    return latency, quality


def start(
    engine: str,
    replicas: int,
    run_dir: Path,
    profile: str | None = None,
    cpus: tuple[int, ...] | None = None,
) -> Supervisor:
    model = resolve_model("smollm2", name=MODEL, require_local=engine == "vllm")
    config = EngineConfig(
        engine=engine,  # type: ignore[arg-type]
        model=model,
        run_dir=run_dir,
        block_size=BLOCK,
        kv_cache_bytes=KV_BYTES,
        max_model_len=4096,
        sim_profile=profile,
        kv_events=False,
        device="cpu",
        cpus=cpus,
    )
    plan = plan_launch(config, replicas)
    sup = Supervisor(plan)
    sup.start()
    sup.wait_ready_blocking(600)
    return sup


#: Idle-machine measurements of this machine kind (2-core AMD EPYC, AVX-512) from
#: ../shared/reference/vllm-cpu.md, vLLM 0.32 eager, one replica per core (§3, §4, §7):
#: a cold 1,520-token prompt on each of two pinned replicas at once: 3.71 / 3.69 s; eight
#: 37-token chats arriving together (one 296-token prefill step): TTFT mean 496 / 520 ms, all
#: 32 tokens done after 1.9 / 1.8 s (-> 8-way decode step ~43.5 ms); a 37-token chat alone:
#: 78 ms (worker on one core); the 1,534-token prompt again (1,504 cached, 30 new): 57-67 ms;
#: greedy decode alone ~28 ms/token on 1.6 cores, ~30 ms on one.
REFERENCE_POINTS: dict[str, Any] = {
    "prefill": [(37, 78.0), (296, 508.0), (1520, 3700.0)],
    "cached": [(1534, 1504, 62.0)],
    "decode": [(1, 30.0), (8, 43.5)],
}


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (for the profile's description)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "machine"


def cmd_fit(args: argparse.Namespace) -> int:
    if args.from_reference:
        points = dict(REFERENCE_POINTS)
        points["wall"] = REFERENCE_POINTS
        load = float("nan")
        source = (
            "idle-machine measurements of real vLLM 0.32 on this machine kind "
            "(../shared/reference/vllm-cpu.md §3, §4, §7; REFERENCE_POINTS in the script): "
            "benchmarks/fit_smollm2_cpu.py fit --from-reference"
        )
        return _write_profile(args, points, load, source)
    # One core, as each replica of a 2-replica cluster on this 2-core machine gets.
    sup = start("vllm", 1, Path(args.run_dir) / "fit", cpus=(args.cpu,))
    try:
        url = sup.plan.replicas[0].base_url
        pgid = sup.replicas[0].pid
        assert pgid is not None
        probe = CpuProbe(pgid)
        probe.calibrate_idle()
        print(
            f"measuring real vLLM at {url} (pinned to cpu {sup.plan.replicas[0].cpus}; "
            f"idle CPU {probe.idle_ns_per_s / 1e6:.1f} ms/s; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        points = asyncio.run(measure(url, args.repeats, args.seed, probe, args.clock))
        load = os.getloadavg()[0]
    finally:
        sup.stop_blocking()
    source = (
        f"benchmarks/fit_smollm2_cpu.py fit --repeats {args.repeats} --clock {args.clock} "
        f"on {args.machine}"
    )
    return _write_profile(args, points, load, source)


def _write_profile(
    args: argparse.Namespace, points: dict[str, Any], load: float, source: str
) -> int:
    latency, quality = fit(points)
    kv_per_token = 2 * 30 * 3 * 64 * 2
    profile = {
        "name": args.name,
        "description": "SmolLM2-135M-Instruct on real vLLM 0.32 (vllm-cpu, eager, bf16) pinned to one CPU core, fitted by benchmarks/fit_smollm2_cpu.py",
        "source": f"{source}; {time.strftime('%Y-%m-%d')}",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "block_size": BLOCK,
        "num_gpu_blocks": KV_BYTES // kv_per_token // BLOCK,
        "max_num_seqs": 128,
        "max_num_batched_tokens": 2048,
        "max_model_len": 8192,
        "latency": latency,
        "fit_quality": quality,
        "measurements": {
            "clock": "reference" if args.from_reference else args.clock,
            "load_average": None if load != load else round(load, 1),
            "wall_clock": {
                "prefill_ttft_ms": [[int(n), round(t, 1)] for n, t in points["wall"]["prefill"]],
                "cached_ttft_ms": [
                    [int(n), int(c), round(t, 1)] for n, c, t in points["wall"]["cached"]
                ],
                "decode_itl_ms": [[int(b), round(t, 2)] for b, t in points["wall"]["decode"]],
            },
            "prefill_ttft_ms": [[int(n), round(t, 2)] for n, t in points["prefill"]],
            "cached_ttft_ms": [[int(n), int(c), round(t, 2)] for n, c, t in points["cached"]],
            "decode_itl_ms": [[int(b), round(t, 3)] for b, t in points["decode"]],
        },
    }
    out = Path(args.output)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(json.dumps({"latency": latency, "fit_quality": quality}, indent=2))
    print(f"wrote {out}")
    return 0


def workload(seed: int, groups: int, per_group: int, prefix: int, suffix: int) -> list[list[int]]:
    """Shared-prefix groups (like a system prompt per tenant), interleaved, deterministic."""
    rng = random.Random(seed)
    prefixes = [fresh_prompt(rng, prefix) for _ in range(groups)]
    prompts = [p + fresh_prompt(rng, suffix) for _ in range(per_group) for p in prefixes]
    return prompts


async def run_workload(
    urls: list[str],
    prompts: list[list[int]],
    rate: float,
    out_tokens: int,
    seed: int,
    probes: dict[str, CpuProbe] | None = None,
) -> list[StreamResult]:
    """Poisson arrivals at ``rate``/s; request i goes to replica ``group(i) % len(urls)``.

    Routing by prefix group (what a cache-aware router converges to) keeps each group's
    prefix on one replica, so both engines see the same hit pattern.
    """
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        for _i, prompt in enumerate(prompts):
            url = urls[hash(tuple(prompt[:BLOCK])) % len(urls)]
            probe = probes.get(url) if probes else None
            tasks.append(
                asyncio.create_task(stream_completion(session, url, prompt, out_tokens, probe))
            )
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def summarise(results: list[StreamResult]) -> dict[str, float]:
    ttft = [r.ttft_ms for r in results]
    itl = [g for r in results for g in r.itl_ms]
    extra: dict[str, float] = {}
    if all(r.cpu_ttft_ms is not None for r in results):
        # What each request cost its replica in CPU time: the idle-core equivalent (exact
        # for requests alone on their replica, an overestimate where they overlap).
        extra["cpu_ttft_p50_ms"] = round(
            statistics.median(r.cpu_ttft_ms or 0.0 for r in results), 1
        )
        extra["cpu_itl_p50_ms"] = round(
            statistics.median(
                (r.cpu_decode_ms or 0.0) / max(1, len(r.itl_ms)) for r in results if r.itl_ms
            ),
            2,
        )
    return extra | {
        "requests": len(results),
        "ttft_p50_ms": round(statistics.median(ttft), 1),
        "ttft_p90_ms": round(float(np.percentile(ttft, 90)), 1),
        "itl_p50_ms": round(statistics.median(itl), 2),
        "itl_p90_ms": round(float(np.percentile(itl, 90)), 2),
        "cached_token_share": round(
            sum(r.cached_tokens for r in results) / max(1, sum(r.prompt_tokens for r in results)), 3
        ),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    prompts = workload(args.seed, args.groups, args.per_group, args.prefix, args.suffix)
    report: dict[str, Any] = {}
    for engine in ("vllm", "sim"):
        sup = start(
            engine,
            2,
            Path(args.run_dir) / f"compare-{engine}",
            profile=args.profile if engine == "sim" else None,
        )
        try:
            urls = sup.plan.endpoints
            # Same warm-up for both: one short request per replica.
            asyncio.run(
                run_workload(
                    urls, [fresh_prompt(random.Random(i), 16) for i in range(2)], 100.0, 2, 0
                )
            )
            probes = None
            if engine == "vllm":
                probes = {}
                for rp in sup.replicas:
                    assert rp.pid is not None
                    probes[rp.spec.base_url] = CpuProbe(rp.pid)
                    probes[rp.spec.base_url].calibrate_idle(1.5)
            load0 = os.getloadavg()[0]
            results = asyncio.run(
                run_workload(urls, prompts, args.rate, args.output_tokens, args.seed, probes)
            )
            load1 = os.getloadavg()[0]
        finally:
            sup.stop_blocking()
        report[engine] = summarise(results) | {"load_average": [round(load0, 1), round(load1, 1)]}
        print(engine, report[engine], flush=True)
    ratio = {
        k: round(report["sim"][k] / report["vllm"][k], 3) for k in ("ttft_p50_ms", "itl_p50_ms")
    }
    report["sim_over_vllm"] = ratio
    if "cpu_ttft_p50_ms" in report["vllm"]:
        report["sim_over_vllm_cpu_time"] = {
            "ttft_p50": round(report["sim"]["ttft_p50_ms"] / report["vllm"]["cpu_ttft_p50_ms"], 3),
            "itl_p50": round(report["sim"]["itl_p50_ms"] / report["vllm"]["cpu_itl_p50_ms"], 3),
        }
    report["workload"] = {
        "groups": args.groups,
        "per_group": args.per_group,
        "prefix_tokens": args.prefix,
        "suffix_tokens": args.suffix,
        "output_tokens": args.output_tokens,
        "rate_per_s": args.rate,
        "seed": args.seed,
        "routing": "by prefix group (first block), 2 replicas",
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


#: vllm-cpu.md §7, two real replicas pinned one per core, idle machine: one cold ~1,520-token
#: prompt at each at once, then 8 concurrent short chats (37 prompt tokens, 32 out) at each.
REFERENCE_SCENARIO = {
    "cold_ttft_ms": [3710.0, 3690.0],
    "chats_ttft_mean_ms": [496.0, 520.0],
    "chats_all_done_ms": [1900.0, 1800.0],
}


async def _scenario(urls: list[str], seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        cold = await asyncio.gather(
            *(stream_completion(session, url, fresh_prompt(rng, 1520), 1) for url in urls)
        )

        async def chats(url: str) -> tuple[float, float]:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(stream_completion(session, url, fresh_prompt(rng, 37), 32) for _ in range(8))
            )
            return statistics.fmean(r.ttft_ms for r in results), (time.perf_counter() - t0) * 1000

        per_replica = await asyncio.gather(*(chats(url) for url in urls))
        mean_ttft = [m for m, _ in per_replica]
        done = [d for _, d in per_replica]
    return {
        "cold_ttft_ms": [round(r.ttft_ms, 1) for r in cold],
        "chats_ttft_mean_ms": [round(x, 1) for x in mean_ttft],
        "chats_all_done_ms": [round(x, 1) for x in done],
    }


def cmd_scenario(args: argparse.Namespace) -> int:
    """The reference's two-replica scenario against 2 simulated replicas (smollm2-cpu)."""
    sup = start("sim", 2, Path(args.run_dir) / "scenario-sim", profile="smollm2-cpu")
    try:
        measured = asyncio.run(_scenario(sup.plan.endpoints, args.seed))
    finally:
        sup.stop_blocking()
    report = {"real_vllm_idle_reference": REFERENCE_SCENARIO, "sim_smollm2_cpu": measured}
    report["sim_over_real"] = {
        k: [round(a / b, 3) for a, b in zip(measured[k], REFERENCE_SCENARIO[k], strict=True)]
        for k in REFERENCE_SCENARIO
    }
    print(json.dumps(report, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--cpu", type=int, default=0, help="the core the measured replica runs on")
    f.add_argument(
        "--from-reference",
        action="store_true",
        help="fit the idle-machine measurements in REFERENCE_POINTS instead of measuring",
    )
    f.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="fit CPU-time figures (right on a shared machine) or wall-clock ones (idle machine)",
    )
    f.add_argument("--output", default=str(PROFILE_PATH))
    f.add_argument("--name", default="smollm2-cpu", help="the profile's name")
    f.add_argument(
        "--machine",
        default=f"a {os.cpu_count()}-core {_cpu_model()}",
        help="for the profile's source",
    )
    c = sub.add_parser("compare")
    c.add_argument("--groups", type=int, default=4)
    c.add_argument("--per-group", type=int, default=6)
    c.add_argument("--prefix", type=int, default=512)
    c.add_argument("--suffix", type=int, default=64)
    c.add_argument("--output-tokens", type=int, default=32)
    c.add_argument("--rate", type=float, default=1.0)
    c.add_argument("--json", default=None)
    c.add_argument("--profile", default="smollm2-cpu", help="the simulator's profile")
    sc = sub.add_parser("scenario", help="the reference's 2-replica scenario on the simulator")
    for p in (f, c, sc):
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--run-dir", default="/tmp/kvgate-fit-smollm2")
    args = parser.parse_args()
    # Stop the replicas (in finally blocks) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    commands = {"fit": cmd_fit, "compare": cmd_compare, "scenario": cmd_scenario}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
