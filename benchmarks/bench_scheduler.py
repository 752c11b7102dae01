"""Scheduler decision time: one ``Scheduler.schedule`` call with llm-d's default config.

The seed's configuration (queue 2 / kv-cache-utilization 2 / approximate prefix-cache 3,
max-score-picker, single-profile-handler) is built through kvgate.config exactly as the gateway
builds it. Endpoints report vLLM's ``cache_config_info`` (block_size 16, so the prefix scorer
autotunes to 64-byte blocks) and random queue/KV metrics. Before timing, the prefix index is
warmed by scheduling requests and running PreRequest, so lookups walk populated LRUs.

Each timed request is a fresh ``Request`` (the gateway builds one per HTTP request, so the
per-request hash memo starts empty): half share a long prefix with an earlier request, half
are new. Only ``schedule`` is timed; ``pre_request`` (the index update) is reported apart.

    taskset -c 1 .venv/bin/python benchmarks/bench_scheduler.py           # headline + tables
    taskset -c 1 .venv/bin/python benchmarks/bench_scheduler.py --quick   # smaller tables
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import string
import time
import timeit
from collections.abc import Sequence

from kvgate.config import build_scheduler, load_picker_config
from kvgate.config.policies import policy_config_text
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import Endpoint, Metrics, Request

KIB = 1024


def make_endpoints(n: int, rng: random.Random) -> list[Endpoint]:
    return [
        Endpoint(
            f"default/vllm-{i}-rank-0",
            f"10.0.{i // 250}.{i % 250 + 1}",
            8000,
            metrics=Metrics(
                waiting_queue_size=rng.randrange(0, 8),
                running_requests_size=rng.randrange(0, 32),
                kv_cache_usage_percent=rng.random(),
                cache_block_size=16,
                cache_num_gpu_blocks=31250,
                updated_at=time.monotonic(),
            ),
        )
        for i in range(n)
    ]


def make_prompts(count: int, length: int, rng: random.Random, group: int = 4) -> list[str]:
    """``count`` prompts of ``length`` chars: groups of ``group`` share all but the last 1/8.

    ``group=1`` makes every prompt new (every decision a prefix miss).
    """
    alphabet = string.ascii_letters + string.digits + "     "
    prompts: list[str] = []
    shared = ""
    for i in range(count):
        if i % group == 0:
            shared = "".join(rng.choices(alphabet, k=length - length // 8))
        tail = "".join(rng.choices(alphabet, k=length // 8))
        prompts.append(shared + tail)
    return prompts


def build(seed: int = 0) -> Scheduler:
    config = load_picker_config(
        text=policy_config_text("llm-d-default"), source_name="llm-d-default", env={}
    )
    return build_scheduler(config, PluginContext(rng=random.Random(seed)))


def measure(
    prompt_bytes: int,
    num_endpoints: int,
    iterations: int,
    warmup: int,
    seed: int = 0,
    group: int = 4,
) -> tuple[list[float], list[float], list[float]]:
    """(schedule wall seconds, schedule CPU seconds, pre_request wall seconds) per request.

    CPU time (``time.thread_time``) leaves out time the OS gave the core to other processes,
    so it shows the decision's own cost on a shared machine; wall time is what a request sees.
    """
    rng = random.Random(seed)
    scheduler = build(seed)
    endpoints = make_endpoints(num_endpoints, rng)
    prompts = make_prompts(warmup + iterations, prompt_bytes, rng, group)
    for i in range(warmup):
        request = Request(f"w{i}", "model", prompt=prompts[i])
        scheduler.pre_request(request, scheduler.schedule(request, endpoints))
    schedule_s: list[float] = []
    schedule_cpu_s: list[float] = []
    pre_request_s: list[float] = []
    clock = time.perf_counter
    cpu = time.thread_time
    for i in range(iterations):
        # Built and dropped one at a time, as the gateway does: a request kept alive keeps
        # its encoded prompt (32 KiB here), and fresh memory costs ~8 page faults per request
        # (about 80 us on this VM), which a server reusing freed memory does not pay.
        request = Request(f"r{i}", "model", prompt=prompts[warmup + i])
        c0 = cpu()
        t0 = clock()
        result = scheduler.schedule(request, endpoints)
        t1 = clock()
        c1 = cpu()
        scheduler.pre_request(request, result)
        t2 = clock()
        schedule_s.append(t1 - t0)
        schedule_cpu_s.append(c1 - c0)
        pre_request_s.append(t2 - t1)
    return schedule_s, schedule_cpu_s, pre_request_s


def breakdown(prompt_bytes: int, num_endpoints: int, iterations: int, group: int) -> str:
    """Median time per plugin call (via the Scheduler's observe hook) and the rest."""
    rng = random.Random(1)
    scheduler = build(1)
    endpoints = make_endpoints(num_endpoints, rng)
    prompts = make_prompts(200 + iterations, prompt_bytes, rng, group)
    for i in range(200):
        request = Request(f"w{i}", "model", prompt=prompts[i])
        scheduler.pre_request(request, scheduler.schedule(request, endpoints))
    per_plugin: dict[str, list[float]] = {}
    totals: list[float] = []

    def observe(point: str, type_name: str, name: str, seconds: float) -> None:
        per_plugin.setdefault(f"{point} {name}", []).append(seconds)

    scheduler.observe = observe
    for i in range(iterations):
        request = Request(f"r{i}", "model", prompt=prompts[200 + i])
        t0 = time.perf_counter()
        result = scheduler.schedule(request, endpoints)
        totals.append(time.perf_counter() - t0)
        scheduler.pre_request(request, result)
    parts = [f"{key} {us(statistics.median(v))}" for key, v in per_plugin.items()]
    summed = sum(
        statistics.median(v) * len(v) / iterations
        for key, v in per_plugin.items()
        if not key.startswith("pre_request")  # runs after schedule(), not inside it
    )
    rest = statistics.median(totals) - summed
    return "; ".join(parts) + f"; framework and timing {us(max(rest, 0.0))} (us, medians)"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def calibration_ms() -> float:
    """Best of 5 runs of a fixed pure-Python loop (about 20-30 ms on an idle modern core), to
    show how fast the core was while the figures were taken."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--table-iterations", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="fewer cells and iterations")
    parser.add_argument("--no-table", action="store_true")
    args = parser.parse_args()

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    print(f"python {platform.python_version()} on {platform.machine()}, CPUs allowed: {affinity}")
    print(f"calibration: 1M-iteration Python loop {calibration_ms():.1f} ms (best of 5)")
    reference = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000
    print(f"reference: sum(range(1000)) {reference * 1e6:.1f} us (about 10 us on an idle core)")
    gc.collect()

    print()
    print("Headline: llm-d default config (queue 2 / kv 2 / prefix 3), 16 endpoints, 32 KiB prompt")
    print()
    print("| workload | wall median | wall p99 | CPU min | CPU p10 | CPU median | CPU p99 |")
    print("|---|---|---|---|---|---|---|")
    pre_all: list[float] = []
    workloads = (
        ("mixed: groups of 4 share 7/8 of the prompt", 4),
        ("every prompt new (prefix misses)", 1),
        ("one long shared prefix (256-block hits)", 10**9),
    )
    for label, group in workloads:
        wall, cpu, pre = measure(32 * KIB, 16, args.iterations, warmup=200, group=group)
        pre_all += pre
        row = [
            us(statistics.median(wall)),
            us(pct(wall, 0.99)),
            us(min(cpu)),
            us(pct(cpu, 0.10)),
            us(statistics.median(cpu)),
            us(pct(cpu, 0.99)),
        ]
        print(f"| {label} | " + " | ".join(row) + " |")
    print()
    print(
        f"pre_request() (index update, after the decision): median "
        f"{us(statistics.median(pre_all))} us, p99 {us(pct(pre_all, 0.99))} us"
    )
    print("  per-plugin medians, long shared prefixes:")
    print("    " + breakdown(32 * KIB, 16, args.iterations // 4, 10**9))
    print("  per-plugin medians, prefix misses:")
    print("    " + breakdown(32 * KIB, 16, args.iterations // 4, 1))
    if args.no_table:
        return

    lengths = [1, 4, 16, 32, 64, 256] if not args.quick else [1, 32, 256]
    counts = [4, 16, 64, 256] if not args.quick else [4, 16, 256]
    iters = args.table_iterations if not args.quick else 150
    cells: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for kib in lengths:
        for n in counts:
            w, c, _ = measure(kib * KIB, n, iters, warmup=min(100, 4 * n))
            cells[kib, n] = (w, c)

    def cpu_cell(c: list[float]) -> str:
        return f"{us(pct(c, 0.1))} / {us(statistics.median(c))} / {us(pct(c, 0.99))}"

    def wall_cell(w: list[float]) -> str:
        return f"{us(statistics.median(w))} / {us(pct(w, 0.99))}"

    tables = (
        (
            "schedule() CPU time p10 / median / p99 in us (mixed workload), by prompt length "
            "(rows) and endpoint count",
            1,
            cpu_cell,
        ),
        ("schedule() wall time median / p99 in us, same runs", 0, wall_cell),
    )
    for title, which, cell in tables:
        print()
        print(title)
        print()
        print("| prompt | " + " | ".join(f"{n} endpoints" for n in counts) + " |")
        print("|---|" + "---|" * len(counts))
        for kib in lengths:
            row = " | ".join(cell(cells[kib, n][which]) for n in counts)
            print(f"| {kib} KiB | {row} |")


if __name__ == "__main__":
    main()
