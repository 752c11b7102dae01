"""Longest single ``KVBlockIndex.block_stored`` call while an index fills past its cap.

The subscriber applies KV-event batches on the gateway's event loop, so one slow call is a
routing stall. Fills an index capped at ``--cap`` blocks with ``--blocks`` new 64-block
chains over 32 endpoints and prints the p50, p99.9 and worst call times. With ``--drop N`` it
then drops N endpoints (as when pods leave or engines send AllBlocksCleared) and keeps
applying one-event batches until the index has swept their bits out, printing the longest
call meanwhile.

    taskset -c 1 .venv/bin/python benchmarks/bench_kv_index_pauses.py --cap 3000000 --blocks 4000000
    taskset -c 1 .venv/bin/python benchmarks/bench_kv_index_pauses.py --cap 3000000 --blocks 3000000 --drop 8
"""

from __future__ import annotations

import argparse
import json
import random
import time

from kvgate.kvcache.events import BlockStored, EventBatch
from kvgate.kvcache.index import KVBlockIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=3_000_000, help="max_blocks of the index")
    parser.add_argument("--blocks", type=int, default=4_000_000, help="blocks to store")
    parser.add_argument("--batch", type=int, default=64, help="blocks per stored event")
    parser.add_argument("--drop", type=int, default=0, help="endpoints to drop after the fill")
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
    result: dict[str, object] = {
        "calls": n,
        "p50_ms": round(times[n // 2] * 1e3, 3),
        "p999_ms": round(times[int(n * 0.999)] * 1e3, 2),
        "max_ms": round(times[-1] * 1e3, 1),
        "worst5_ms": [round(x * 1e3, 1) for x in times[-5:]],
    }
    if args.drop:
        blocks = index.num_blocks
        drops: list[float] = []
        for name in names[: args.drop]:
            t = time.perf_counter()
            index.drop_endpoint(name)
            drops.append(time.perf_counter() - t)
        batches: list[float] = []
        start = time.perf_counter()
        # (getattr: an index from before incremental sweeps, for before/after runs)
        while getattr(index, "sweeping", False):  # events keep arriving meanwhile
            tokens[0] = -len(batches) - 1
            event = BlockStored(list(range(h, h + 4)), None, tokens[:64], 16, None, "GPU", None)
            t = time.perf_counter()
            index.apply_batch(names[-1], EventBatch(0.0, [event]))
            batches.append(time.perf_counter() - t)
            h += 4
        result["sweep"] = {
            "blocks": blocks,
            "dropped": args.drop,
            "drop_max_ms": round(max(drops) * 1e3, 3),
            "batches": len(batches),
            "max_ms": round(max(batches, default=0.0) * 1e3, 2),
            "total_s": round(time.perf_counter() - start, 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
