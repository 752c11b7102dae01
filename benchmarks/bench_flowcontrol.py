"""Flow control: cost of ``FlowController.admit`` on its fast path (nothing queued, pool free).

The fast path returns without awaiting anything, so the figure is the synchronous cost of one
admit: the clock, the candidates callback, the detector's check over ``--endpoints`` endpoints
(fresh metrics, below the thresholds) and the outcome metrics. Each timed admit is followed by
``dispatched`` and ``completed`` (the request path's calls), outside the timed span::

    python benchmarks/bench_flowcontrol.py --endpoints 8 --iterations 200000

Target (brief A): p50 <= 20 us.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import prometheus_client

from kvgate.flowcontrol import FlowControlConfig, FlowController, FlowItem, ThresholdDetector
from kvgate.scheduling.types import Endpoint, Metrics


async def measure(endpoints: int, iterations: int) -> list[float]:
    pool = [Endpoint(f"ep{i}", "127.0.0.1", 8000 + i) for i in range(endpoints)]
    detector = ThresholdDetector(5, 0.8, 3600.0)
    fc = FlowController(
        FlowControlConfig(), detector, lambda: pool, registry=prometheus_client.CollectorRegistry()
    )
    samples: list[float] = []
    item = FlowItem("r", "tenant", 0, 1024, "model")
    clock = time.perf_counter
    for i in range(iterations):
        if i % 1000 == 0:  # keep the scrapes fresh, as the 50 ms scraper would
            now = time.monotonic()
            for ep in pool:
                ep.metrics = Metrics(waiting_queue_size=1, updated_at=now)
        coro = fc.admit(item)
        start = clock()
        try:
            coro.send(None)  # the fast path finishes in its first step
        except StopIteration:
            pass
        else:  # pragma: no cover - the pool is never saturated here
            raise RuntimeError("admit suspended: not the fast path")
        samples.append(clock() - start)
        fc.dispatched(pool[i % endpoints].name)
        fc.completed(pool[i % endpoints].name)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args()
    samples = sorted(asyncio.run(measure(args.endpoints, args.iterations)))
    q = statistics.quantiles(samples, n=100)
    print(
        f"admit fast path, {args.endpoints} endpoints, {args.iterations} admits: "
        f"p50 {q[49] * 1e6:.2f} us, p90 {q[89] * 1e6:.2f} us, p99 {q[98] * 1e6:.2f} us"
    )


if __name__ == "__main__":
    main()
