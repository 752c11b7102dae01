"""How well predicted-latency-producer predicts: predicted vs observed TTFT and TPOT per
request, on simulated replicas, through a real ``kvgate serve``.

Starts ``--replicas`` ``kvgate sim`` replicas and one ``kvgate serve`` running the
``predicted-latency`` policy (streaming) with ``--log-level debug``, so the producer logs one
``kvgate.latency.samples`` line per trained request: the prediction made for the picked
endpoint *before* that request trained the model (out of sample) beside what the gateway
observed. Drives the ``mixed`` workload (shortened outputs) at ``--rate`` req/s and prints
MAE, p50 and p90 absolute error and the mean absolute percentage error of both, over the
requests after the first ``--skip`` samples::

    python benchmarks/latency_quality.py --requests 200 --rate 6
    python benchmarks/latency_quality.py --requests 200 --rate 6 --latency-profile qwen3-0.6b-h100

A short run (about 40 s on 2 cores); docs/latency.md quotes its figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvgate.bench.mixed import MixedParams, mixed
from kvgate.bench.procs import Proc, kvgate_argv, wait_in_rotation, wait_ready
from kvgate.bench.runner import LoadSpec, RunConfig, run_sync
from kvgate.bench.workloads import Workload
from kvgate.config.policies import policy_config_text
from kvgate.engines.hosts import free_port


def _errors(pairs: list[tuple[float, float]]) -> dict[str, float | int]:
    if not pairs:
        return {"n": 0}
    errors = sorted(abs(p - o) for p, o in pairs)
    pct = [abs(p - o) / o for p, o in pairs if o > 0]
    return {
        "n": len(pairs),
        "observed_mean_ms": round(statistics.fmean(o for _, o in pairs), 2),
        "mae_ms": round(statistics.fmean(errors), 2),
        "p50_abs_error_ms": round(errors[len(errors) // 2], 2),
        "p90_abs_error_ms": round(errors[min(len(errors) - 1, int(0.9 * len(errors)))], 2),
        "mape": round(statistics.fmean(pct), 3) if pct else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--skip", type=int, default=20, help="samples left out while it learns")
    ap.add_argument("--latency-profile", default="", help="latencyProfile: start calibrated")
    ap.add_argument("--sim-profile", default="qwen3-0.6b-h100")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    config = policy_config_text("predicted-latency")
    if args.latency_profile:
        config = config.replace(
            "    streamingMode: true\n",
            f"    streamingMode: true\n    latencyProfile: {args.latency_profile}\n",
        )
    work = Path(tempfile.mkdtemp(prefix="latency-quality-"))
    procs: list[Proc] = []
    ports: set[int] = set()
    try:
        sims = []
        for i in range(args.replicas):
            port = free_port("127.0.0.1", ports)
            ports.add(port)
            argv = kvgate_argv(
                "sim", "--port", str(port), "--model", "m", "--seed", str(i),
                "--profile", args.sim_profile,
            )  # fmt: skip
            procs.append(Proc(f"sim{i}", argv, work / f"sim{i}.log"))
            sims.append(f"http://127.0.0.1:{port}")
        wait_ready([(p, url + "/health") for p, url in zip(procs, sims, strict=True)], 60)
        gw_port = free_port("127.0.0.1", ports)
        argv = kvgate_argv(
            "serve", "--port", str(gw_port), "--config-text", config, "--log-format", "json",
            "--log-level", "debug", "--no-request-log",
            *[a for url in sims for a in ("--endpoint", url)],
        )  # fmt: skip
        gateway = Proc("gateway", argv, work / "gateway.log")
        procs.append(gateway)
        gw = f"http://127.0.0.1:{gw_port}"
        wait_ready([(gateway, gw + "/ready")], 60)
        wait_in_rotation(gw + "/metrics", args.replicas, 30)
        params = MixedParams(num_requests=args.requests, output_median=30, max_output_len=200)
        workload = Workload("mixed", "completions", tuple(mixed(params, "completions", args.seed)))
        load = LoadSpec(mode="poisson", rates=(args.rate,), max_requests=args.requests)
        records, _ = run_sync(RunConfig(base_url=gw, model="m"), workload, load)
    finally:
        for p in reversed(procs):
            p.stop()
    samples: list[dict[str, Any]] = []
    for line in (work / "gateway.log").read_text().splitlines():
        if line.startswith("{") and '"kvgate.latency.samples"' in line:
            samples.append(json.loads(line))
    used = [s for s in samples[args.skip :] if s.get("predicted_ttft_ms") is not None]
    ttft = [(s["predicted_ttft_ms"], s["observed_ttft_ms"]) for s in used]
    tpot = [
        (s["predicted_tpot_ms"], s["observed_tpot_ms"])
        for s in used
        if s.get("observed_tpot_ms") is not None
    ]
    report = {
        "requests": len(records),
        "errors": sum(1 for r in records if not r.ok),
        "samples": len(samples),
        "latency_profile": args.latency_profile or None,
        "rate": args.rate,
        "ttft": _errors(ttft),
        "tpot": _errors(tpot),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
