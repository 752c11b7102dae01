"""The cost of predicted-latency routing per request: predicted-latency-producer's
``produce`` (features and two predictions per candidate, SLO headroom) over a pool, and the
latency-scorer over the result, in-process (no I/O, no server).

Prints one JSON report with p50/p90/p99 microseconds per request for each part::

    python benchmarks/bench_latency_predictor.py --endpoints 16 --iterations 20000

The budget (docs/latency.md): producer + scorer for a 16-endpoint pool <= 50 us p50.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from kvgate.latency import LATENCY_PREDICTION_INFO, LatencyPredictionInfo
from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import default_registry
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo, TokenizedPrompt
from kvgate.scheduling.types import CycleState, Endpoint, Metrics, Request


def _pool(n: int, rng: random.Random) -> list[Endpoint]:
    return [
        Endpoint(
            f"ep{i}",
            "10.0.0.1",
            8000 + i,
            metrics=Metrics(
                waiting_queue_size=rng.randint(0, 8),
                running_requests_size=rng.randint(0, 64),
                kv_cache_usage_percent=rng.random(),
            ),
        )
        for i in range(n)
    ]


def _request(i: int, pool: list[Endpoint], rng: random.Random) -> Request:
    req = Request(f"r{i}", "m", prompt="x", headers={"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50"})
    tokens = rng.randint(100, 8000)
    data.put_tokenized(
        req,
        DataKey(data.TOKENIZED_PROMPT, "token-producer"),
        TokenizedPrompt(tuple(range(tokens)), estimated=True),
    )
    blocks = tokens // 16
    data.put(
        req,
        DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
        {e.name: PrefixCacheMatchInfo(h, blocks, 16, h)
         for e in pool for h in [rng.randint(0, blocks)]},
    )  # fmt: skip
    data.put(
        req,
        DataKey(data.IN_FLIGHT_LOAD, "inflight-load-producer"),
        {e.name: InFlightLoad(rng.randint(0, 30), rng.randint(0, 40_000)) for e in pool},
    )
    return req


def _percentiles(samples_us: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_us, n=100)
    return {"p50_us": round(q[49], 2), "p90_us": round(q[89], 2), "p99_us": round(q[98], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--profile", default="qwen3-0.6b-h100", help="latencyProfile of the producer")
    args = ap.parse_args()
    rng = random.Random(1)
    registry = default_registry()
    ctx = PluginContext(rng=random.Random(2))
    producer = registry.create(
        "predicted-latency-producer", "predicted-latency-producer",
        {"streamingMode": True, "latencyProfile": args.profile}, ctx,
    )  # fmt: skip
    scorer = registry.create("latency-scorer", "latency-scorer", None, ctx)
    pool = _pool(args.endpoints, rng)
    requests = [_request(i, pool, rng) for i in range(min(args.iterations, 2000))]
    key = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
    produce_us: list[float] = []
    score_us: list[float] = []
    for i in range(args.iterations):
        req = requests[i % len(requests)]
        state = CycleState()
        t0 = time.perf_counter()
        producer.produce(state, req, pool)  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        scorer.score(state, req, pool)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        produce_us.append((t1 - t0) * 1e6)
        score_us.append((t2 - t1) * 1e6)
        assert data.per_endpoint(req, key, LatencyPredictionInfo)
    total = [a + b for a, b in zip(produce_us, score_us, strict=True)]
    report = {
        "endpoints": args.endpoints,
        "iterations": args.iterations,
        "profile": args.profile,
        "producer": _percentiles(produce_us),
        "scorer": _percentiles(score_us),
        "producer_plus_scorer": _percentiles(total),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
