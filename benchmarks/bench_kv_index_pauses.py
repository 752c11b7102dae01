"""Longest single ``KVBlockIndex.block_stored`` call while an index fills past its cap.

The subscriber applies KV-event batches on the gateway's event loop, so one slow call is a
routing stall. Fills an index capped at ``--cap`` blocks with ``--blocks`` new 64-block
chains over 32 endpoints and prints the p50, p99.9 and worst call times.

    taskset -c 1 .venv/bin/python benchmarks/bench_kv_index_pauses.py --cap 3000000 --blocks 4000000
"""

from __future__ import annotations

import argparse
import json
import random
import time

from kvgate.kvcache.events import BlockStored
from kvgate.kvcache.index import KVBlockIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=3_000_000, help="max_blocks of the index")
    parser.add_argument("--blocks", type=int, default=4_000_000, help="blocks to store")
    parser.add_argument("--batch", type=int, default=64, help="blocks per stored event")
    args = parser.parse_args()
    rng = random.Random(1)
    index = KVBlockIndex(block_size=16, max_blocks=args.cap)
    names = [f"10.0.0.{i}:8000" for i in range(32)]
    tokens = [rng.randrange(150_000) for _ in range(args.batch * 16)]
    times: list[float] = []
    h = 1
    for i in range(args.blocks // args.batch):
        tokens[0] = i  # a new chain every time
        event = BlockStored(list(range(h, h + args.batch)), None, tokens, 16, None, "GPU", None)
        t = time.perf_counter()
        index.block_stored(names[i % 32], event)
        times.append(time.perf_counter() - t)
        h += args.batch
    times.sort()
    n = len(times)
    print(
        json.dumps(
            {
                "calls": n,
                "p50_ms": round(times[n // 2] * 1e3, 3),
                "p999_ms": round(times[int(n * 0.999)] * 1e3, 2),
                "max_ms": round(times[-1] * 1e3, 1),
                "worst5_ms": [round(x * 1e3, 1) for x in times[-5:]],
            }
        )
    )


if __name__ == "__main__":
    main()
