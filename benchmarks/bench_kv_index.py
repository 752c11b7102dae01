"""Precise prefix-cache index: ingest rate, bytes per entry, scoring time.

1. **Ingest** (one core): replays a synthetic KV-event stream from ``--endpoints`` replicas as
   vLLM publishes it -- prefill batches of 1-64 chained blocks plus one-block decode batches,
   each as its own msgpack payload in the map layout, with evictions (BlockRemoved) keeping
   each replica at its capacity -- through ``decode_batch`` + ``KVBlockIndex.apply_batch``.
   Reports block events (stored + removed hashes) per second, decode included and excluded.
2. **Memory**: fills an index to ``--entries`` (block, endpoint) entries, all hashes unique,
   once with one holder per block (the worst case) and once with ``--sharing`` holders per
   block, and reports the resident-set growth per entry (engine-hash map included).
3. **Scoring**: an ``--prompt-tokens`` prompt against 32 endpoints that hold prefixes of it of
   different lengths (some on the CPU tier) in an index of 1 M other blocks: request-key
   chaining + longest-prefix walk, excluding tokenization. Tokenizing the same text with the
   built-in tokenizer is reported apart: a whole encode, and the scorer's chunk-cached encode
   (``tokenize.ChunkCachedEncoder``) of a new prompt (cold) and of one resending a prefix
   seen before with another question (seen).

    .venv/bin/python benchmarks/bench_kv_index.py [--quick] [--entries 10000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

from kvgate.kvcache.events import BlockRemoved, BlockStored, EventBatch, decode_batch, encode_batch
from kvgate.kvcache.index import KVBlockIndex
from kvgate.kvcache.tokenize import ChunkCachedEncoder, Tokenizer
from kvgate.scheduling.types import Request


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_stream(
    endpoints: int, blocks: int, block_size: int, capacity: int, seed: int
) -> list[tuple[str, bytes]]:
    """(endpoint, payload) in publish order; about ``blocks`` stored blocks in all."""
    rng = random.Random(seed)
    names = [f"10.0.{i // 250}.{i % 250}:8000" for i in range(endpoints)]
    live: dict[str, list[int]] = {n: [] for n in names}  # stored hashes in LRU order
    next_hash = 1
    out: list[tuple[str, bytes]] = []
    stored = 0
    while stored < blocks:
        name = names[rng.randrange(endpoints)]
        # 70 %: a prefill storing a new chain of 1-64 blocks; else a decode step filling one
        n = rng.randint(1, 64) if rng.random() < 0.7 else 1
        hashes = list(range(next_hash, next_hash + n))
        next_hash += n
        tokens = [rng.randrange(150_000) for _ in range(n * block_size)]
        events: list[BlockStored | BlockRemoved] = [
            BlockStored(hashes, None, tokens, block_size, None, "GPU", None)
        ]
        held = live[name]
        held.extend(hashes)
        if len(held) > capacity:
            evict = held[: len(held) - capacity]
            del held[: len(evict)]
            events.insert(0, BlockRemoved(evict, "GPU"))
        out.append((name, encode_batch(EventBatch(time.time(), events, 0))))  # type: ignore[arg-type]
        stored += n
    return out


def bench_ingest(args: argparse.Namespace) -> dict[str, float]:
    stream = synthetic_stream(args.endpoints, args.ingest_blocks, args.block_size, 20_000, 1)
    decoded = [(name, decode_batch(payload)) for name, payload in stream]
    block_events = sum(
        len(e.block_hashes)
        for _, b in decoded
        for e in b.events
        if isinstance(e, BlockStored | BlockRemoved)
    )
    results: dict[str, float] = {"batches": len(stream), "block_events": block_events}
    for label, with_decode in (("apply_only", False), ("decode_and_apply", True)):
        best = best_cpu = float("inf")
        for _ in range(args.repeat):
            index = KVBlockIndex(block_size=args.block_size, max_blocks=50_000_000)
            gc.collect()
            gc.disable()
            started = time.perf_counter()
            started_cpu = time.thread_time()
            if with_decode:
                for name, payload in stream:
                    index.apply_batch(name, decode_batch(payload), 0.0)
            else:
                for name, batch in decoded:
                    index.apply_batch(name, batch, 0.0)
            best_cpu = min(best_cpu, time.thread_time() - started_cpu)
            best = min(best, time.perf_counter() - started)
            gc.enable()
        results[f"{label}_block_events_per_s"] = block_events / best
        results[f"{label}_block_events_per_cpu_s"] = block_events / best_cpu
    return results


def bench_memory(args: argparse.Namespace, holders: int) -> dict[str, float]:
    """Fill to ``args.entries`` (block, endpoint) entries with ``holders`` endpoints per block."""
    gc.collect()
    before = rss_bytes()
    index = KVBlockIndex(block_size=16, max_blocks=args.entries)
    blocks = args.entries // holders
    chain = 256
    rng = random.Random(2)
    names = [f"10.1.0.{i}:8000" for i in range(max(holders, 8))]
    next_hash = 1
    done = 0
    while done < blocks:
        n = min(chain, blocks - done)
        tokens = [rng.randrange(150_000) for _ in range(16 * n)]
        hashes = list(range(next_hash, next_hash + n))
        next_hash += n
        first = rng.randrange(len(names))
        for h in range(holders):
            name = names[(first + h) % len(names)]
            event = BlockStored(hashes, None, tokens, 16, None, "GPU", None)
            index.block_stored(name, event)
        done += n
    gc.collect()
    grown = rss_bytes() - before
    out = {
        "holders_per_block": holders,
        "entries": index.num_entries,
        "blocks": index.num_blocks,
        "rss_growth_mb": grown / 2**20,
        "bytes_per_entry": grown / max(1, index.num_entries),
    }
    del index
    gc.collect()
    return out


def bench_score(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(3)
    bs = args.block_size
    tokenizer = Tokenizer.default()
    vocab = [tokenizer.decode([t]) for t in rng.sample(range(1000, 40_000), 2000)]
    text = ""
    ids: list[int] = []
    while len(ids) < args.prompt_tokens:
        text += " ".join(rng.choice(vocab) for _ in range(512)) + " "
        ids = tokenizer.encode(text)
    text_ids = tokenizer.encode(text)
    tokenize = bench_tokenize(tokenizer, text, rng)
    prompt = ids[: args.prompt_tokens]
    index = KVBlockIndex(block_size=bs, max_blocks=5_000_000)
    # background: 1 M unrelated blocks over 32 endpoints
    names = [f"10.2.0.{i}:8000" for i in range(32)]
    h = 10**9
    for i in range(args.background_blocks // 256):
        toks = [rng.randrange(150_000) for _ in range(256 * bs)]
        index.block_stored(
            names[i % 32], BlockStored(list(range(h, h + 256)), None, toks, bs, None, "GPU", None)
        )
        h += 256
    n = len(prompt) // bs
    for j, name in enumerate(names):
        held = n * (j + 1) // 32  # endpoint j holds the first (j+1)/32 of the prompt
        medium = "CPU" if j % 4 == 3 else "GPU"
        index.block_stored(
            name,
            BlockStored(
                list(range(h, h + held)), None, prompt[: held * bs], bs, None, medium, None
            ),
        )
        h += held
    samples_keys: list[float] = []
    samples_total: list[float] = []
    samples_cpu: list[float] = []
    for _ in range(args.score_repeat):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter()
        keys = index.request_keys(prompt)
        t1 = time.perf_counter()
        match = index.match(keys, names)
        t2 = time.perf_counter()
        samples_cpu.append((time.thread_time_ns() - c0) / 1000)
        samples_keys.append((t1 - t0) * 1e6)
        samples_total.append((t2 - t0) * 1e6)
    assert match.blocks[names[-1]] == n
    walk = [t - k for t, k in zip(samples_total, samples_keys, strict=True)]
    return {
        "prompt_tokens": len(prompt),
        "block_size": bs,
        "blocks": n,
        "endpoints": 32,
        "index_blocks": index.num_blocks,
        "score_us_median": statistics.median(samples_total),
        "score_cpu_us_median": statistics.median(samples_cpu),
        "score_cpu_us_min": min(samples_cpu),
        "score_us_p99": sorted(samples_total)[int(0.99 * (len(samples_total) - 1))],
        "keys_us_median": statistics.median(samples_keys),
        "walk_us_median": statistics.median(walk),
        "tokenize_tokens": len(text_ids),
        **tokenize,
    }


def bench_tokenize(tokenizer: Tokenizer, text: str, rng: random.Random) -> dict[str, float]:
    """Median wall and CPU us: a whole encode, and the scorer's chunk-cached encode of a
    request whose prefix is new (cold) or was sent before with another question (seen)."""
    samples: dict[str, list[tuple[float, float]]] = {
        "whole": [],
        "cached_cold": [],
        "cached_seen": [],
    }
    for i in range(7):
        encoder = ChunkCachedEncoder(tokenizer)  # a fresh cache: nothing seen
        prefix = f"{i} {text}"
        question = " ".join(rng.choice(("why", "how", "what", "is", "it")) for _ in range(20))
        runs: list[tuple[str, Callable[[], object]]] = [
            ("whole", partial(tokenizer.encode, text)),
            ("cached_cold", partial(encoder.encode_request, Request("c", "m", prompt=prefix))),
            (
                "cached_seen",
                partial(encoder.encode_request, Request("s", "m", prompt=f"{prefix} {question}?")),
            ),
        ]
        for label, fn in runs:
            c0, t0 = time.thread_time(), time.perf_counter()
            ids = fn()
            wall_us, cpu_us = (time.perf_counter() - t0) * 1e6, (time.thread_time() - c0) * 1e6
            samples[label].append((wall_us, cpu_us))
        assert ids == tuple(tokenizer.encode(f"{prefix} {question}?"))
    out: dict[str, float] = {}
    for label, timed in samples.items():
        out[f"tokenize_{label}_us_median"] = statistics.median(w for w, _ in timed)
        out[f"tokenize_{label}_cpu_us_median"] = statistics.median(c for _, c in timed)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--entries", type=int, default=10_000_000)
    p.add_argument("--sharing", type=int, default=4, help="holders per block, second memory run")
    p.add_argument("--ingest-blocks", type=int, default=1_000_000)
    p.add_argument("--endpoints", type=int, default=32)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=8192)
    p.add_argument("--background-blocks", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--score-repeat", type=int, default=300)
    p.add_argument("--only", choices=["ingest", "memory", "score"], action="append")
    p.add_argument("--memory-holders", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.entries = 200_000
        args.ingest_blocks = 50_000
        args.background_blocks = 50_000
        args.repeat = 1
        args.score_repeat = 50
    if args.memory_holders:  # child process: one memory run, fresh heap
        print(json.dumps(bench_memory(args, args.memory_holders)), flush=True)
        return 0
    only = set(args.only or ["ingest", "memory", "score"])
    report: dict[str, object] = {"python": sys.version.split()[0]}
    if "score" in only:
        report["score"] = bench_score(args)
        print(json.dumps({"score": report["score"]}), flush=True)
    if "ingest" in only:
        report["ingest"] = bench_ingest(args)
        print(json.dumps({"ingest": report["ingest"]}), flush=True)
    if "memory" in only:
        for label, holders in (("memory_unique", 1), ("memory_shared", args.sharing)):
            out = subprocess.run(
                [sys.executable, __file__, "--entries", str(args.entries),
                 "--memory-holders", str(holders)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            report[label] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({label: report[label]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
