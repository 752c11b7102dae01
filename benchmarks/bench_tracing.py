"""Per-request cost of tracing in RequestControl: off (the default), on but sampled out, on.

    .venv/bin/python benchmarks/bench_tracing.py [--requests 20000]

Each request runs begin -> parse -> started -> schedule (round-robin over 2 endpoints) ->
start_attempt -> end_attempt -> finish, log line off. "off" is what every request pays
without ``--tracing``: three ``is not None`` tests. The first pass runs with no tracer and
checks that OpenTelemetry is not imported yet; the others install an SDK tracer with no
exporter (``always_off``, then ``always_on``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from kvgate.config import build_scheduler, load_picker_config, policy_config_text
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol import tracing
from kvgate.requestcontrol.control import RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.scheduling.types import Metrics, ResponseInfo

BODY = b'{"model": "m", "prompt": "hello there"}'


def make_control() -> RequestControl:
    pool = EndpointPool()
    for i in range(2):
        pool.upsert(EndpointSpec(f"e{i}", "127.0.0.1", 9000 + i), healthy=True)
        pool.update_metrics(f"e{i}", Metrics(updated_at=time.monotonic()))
    config = load_picker_config(text=policy_config_text("round-robin"))
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    return RequestControl(pool, scheduler, RequestMetrics(pool), log_requests=False)


def run(control: RequestControl, n: int) -> float:
    """Microseconds per request, best of 5 rounds of ``n``."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            ctx = control.begin("gateway", "/v1/completions")
            control.parse(ctx, "completions", BODY, {})
            control.started(ctx)
            result = control.schedule(ctx, control.candidates(ctx))
            control.start_attempt(ctx, result.target)
            control.end_attempt(ctx, ResponseInfo(status=200))
            control.finish(ctx, 200)
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    n = parser.parse_args().requests
    off = run(make_control(), n)
    assert not any(m.startswith("opentelemetry") for m in sys.modules), "imported while off"
    from opentelemetry.sdk.trace import TracerProvider, sampling

    results = {"off (no --tracing)": off}
    for label, sampler in [
        ("on, sampled out", sampling.ALWAYS_OFF),
        ("on, sampled", sampling.ALWAYS_ON),
    ]:
        tracing.install(tracing.OtelRequestTracer(TracerProvider(sampler=sampler)))
        try:
            results[label] = run(make_control(), n)
        finally:
            tracing.install(None)
    # "off" again after OpenTelemetry is loaded: the difference is noise, not tracing
    results["off, again"] = run(make_control(), n)
    spread = statistics.pstdev([results["off (no --tracing)"], results["off, again"]])
    # what "off" adds to a request: RequestControl's three `self.tracer is not None` tests
    import timeit

    control = make_control()
    guards = "control.tracer is not None; control.tracer is not None; control.tracer is not None"
    results["off: the 3 guards alone"] = (
        min(timeit.repeat(guards, globals={"control": control}, number=200_000, repeat=5))
        / 200_000
        * 1e6
    )
    for label, us in results.items():
        print(f"{label:26s} {us:9.3f} us/request")
    print(f"off vs off again: {spread:.2f} us spread")


if __name__ == "__main__":
    main()
