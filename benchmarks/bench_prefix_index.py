"""Approximate prefix index: resident memory per entry and prefix-scorer time per request.

Memory: fills one ``prefix-cache-scorer`` index with ``--endpoints`` × ``--blocks`` entries
(default 64 × 31,250, GIE's lruCapacityPerServer) in chains of 256 blocks, every hash unique
(the worst case: no sharing between endpoints), then reports the growth of the process's
resident set and bytes per (endpoint, block) entry.

Time: scores a ``--prompt-kib`` KiB completion prompt against ``--score-endpoints``
candidates, each holding 31,250 blocks, hashing included, as a new request each time:
"warm" (one endpoint holds the whole prompt, so all 256 blocks are hashed and walked),
"warm, memoised" (the same request scored again, as a second profile would) and "cold" (a
prompt whose first block nobody holds). Reports median and p99 of the scorer call, wall and
CPU (``time.thread_time``, which leaves out time the core served other processes).

    taskset -c 1 .venv/bin/python benchmarks/bench_prefix_index.py [--endpoints 64] [--blocks 31250]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
import timeit

from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import default_registry
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheScorer
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    Metrics,
    ProfileRunResult,
    Request,
    SchedulingResult,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(scorer: PrefixCacheScorer, endpoints: int, blocks: int, rng: random.Random) -> float:
    started = time.perf_counter()
    for e in range(endpoints):
        name = f"ns/pod-{e}-rank-0"
        left = blocks
        while left > 0:
            n = min(256, left)
            scorer.index.add(name, [rng.getrandbits(64) for _ in range(n)])
            left -= n
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=31250)
    parser.add_argument("--score-endpoints", type=int, default=16)
    parser.add_argument("--prompt-kib", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()

    # A fixed pure-Python workload, so figures from a busy or slower machine can be compared.
    reference = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000
    print(f"reference: sum(range(1000)) takes {reference * 1e6:.1f} us on this machine now")

    rng = random.Random(1)
    ctx = PluginContext(rng=rng)
    params = {"autoTune": False, "lruCapacityPerServer": args.blocks}
    scorer = default_registry().create("prefix-cache-scorer", "prefix-cache-scorer", params, ctx)
    assert isinstance(scorer, PrefixCacheScorer)

    gc.collect()
    before = rss_bytes()
    fill_s = fill(scorer, args.endpoints, args.blocks, rng)
    gc.collect()
    grown = rss_bytes() - before
    entries = len(scorer.index)
    print(f"index: {args.endpoints} endpoints x {args.blocks} blocks = {entries} entries")
    print(f"  RSS growth     {grown / 1e6:8.1f} MB   ({grown / entries:.1f} B/entry)")
    print(f"  fill           {fill_s:8.2f} s    ({fill_s / entries * 1e9:.0f} ns/entry)")

    candidates = [
        Endpoint(f"ns/pod-{e}-rank-0", "10.0.0.1", 8000 + e, {}, Metrics())
        for e in range(args.score_endpoints)
    ]
    words = [f"w{rng.randrange(10_000)}" for _ in range(args.prompt_kib * 300)]
    prompt = " ".join(words)[: args.prompt_kib * 1024]
    warm = Request("warm", "model", prompt=prompt)
    scorer.score(CycleState(), warm, candidates)
    scorer.pre_request(
        warm, SchedulingResult({"default": ProfileRunResult((candidates[0],))}, "default"), {}
    )

    cold_prompts = [f"{i:08d}" + prompt[8:] for i in range(args.iterations)]
    labels = ("warm", "warm, memoised", "cold")
    runs: dict[str, list[float]] = {label: [] for label in labels}
    cpu_runs: dict[str, list[float]] = {label: [] for label in labels}
    clock, cpu = time.perf_counter, time.thread_time
    warm_scores: dict[str, float] = {}
    for i in range(args.iterations):
        req = Request(f"r{i}", "model", prompt=prompt)
        cold = Request(f"c{i}", "model", prompt=cold_prompts[i])
        for label, request in zip(labels, (req, req, cold), strict=True):  # req twice: memoised
            c0, t0 = cpu(), clock()
            scores = scorer.score(CycleState(), request, candidates)
            t1, c1 = clock(), cpu()
            runs[label].append(t1 - t0)
            cpu_runs[label].append(c1 - c0)
            if label == "warm":
                warm_scores = dict(scores)
    assert warm_scores[candidates[0].name] == 1.0
    blocks = len(scorer.hashes(warm, scorer.block_size))
    print(
        f"score: {args.prompt_kib} KiB prompt ({blocks} blocks), {args.score_endpoints} endpoints"
    )
    notes = {
        "warm": f"one endpoint holds all {blocks} blocks: hashes the whole chain",
        "warm, memoised": "same request scored again (a second profile)",
        "cold": "nobody holds block 0: one hash",
    }
    for label, values in runs.items():
        used = cpu_runs[label]
        print(
            f"  {label:15s} wall median {statistics.median(values) * 1e6:6.1f} us"
            f"  p99 {percentile(values, 0.99) * 1e6:6.1f} us"
            f"  | CPU median {statistics.median(used) * 1e6:6.1f} us"
            f"  p99 {percentile(used, 0.99) * 1e6:6.1f} us  min {min(used) * 1e6:6.1f} us"
            f"   ({notes[label]})"
        )


if __name__ == "__main__":
    main()
