"""How well predicted-latency-producer predicts: predicted vs observed TTFT and TPOT per
request, on simulated or real vLLM replicas, through a real ``kvgate serve``.

Starts ``--replicas`` ``kvgate sim`` replicas (``--engine vllm``: real vLLM CPU replicas of
SmolLM2 through kvgate's launcher, one core each) and one ``kvgate serve`` running the
``predicted-latency`` policy (streaming) with ``--log-level debug``, so the producer logs one
``kvgate.latency.samples`` line per trained request: the prediction made for the picked
endpoint *before* that request trained the model (out of sample) beside what the gateway
observed. Drives the ``mixed`` workload (shortened outputs) at ``--rate`` req/s and prints
MAE, p50 and p90 absolute error and the mean absolute percentage error of both, over the
requests after the first ``--skip`` samples, and, to show the cold start, the mean absolute
errors of every successive ``--window`` samples from the first::

    python benchmarks/latency_quality.py --requests 200 --rate 6
    python benchmarks/latency_quality.py --requests 200 --rate 6 --latency-profile qwen3-0.6b-h100
    python benchmarks/latency_quality.py --engine vllm --requests 120 --rate 0.2

A simulated run takes about 40 s on 2 cores; a real-vLLM one ``requests / rate`` plus ~30 s
of start-up. With ``--engine vllm`` the workload is shortened to what a CPU core serves in
seconds (prompts 100-1,000 tokens, outputs up to 64; ``--max-prompt-len`` etc. override).
docs/latency.md quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
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

#: The mixed workload's shape per engine: the simulator's H100 profile takes the full range;
#: a CPU core running SmolLM2 prefills ~400 tokens/s (far less when shared with other work),
#: so real vLLM gets short prompts.
_SHAPES: dict[str, dict[str, int]] = {
    "sim": {"prompt_median": 800, "max_prompt_len": 16000, "prefix_median": 1000,
            "output_median": 30, "max_output_len": 200},
    "vllm": {"prompt_median": 200, "max_prompt_len": 1000, "prefix_median": 200,
             "output_median": 16, "max_output_len": 64},
}  # fmt: skip


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


def _windows(samples: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Mean absolute TTFT/TPOT error of each successive ``size`` samples (the cold start)."""
    out = []
    for start in range(0, len(samples), size):
        chunk = [s for s in samples[start : start + size] if s.get("predicted_ttft_ms") is not None]
        row: dict[str, Any] = {"samples": f"{start + 1}-{start + size}", "predicted": len(chunk)}
        for key in ("ttft", "tpot"):
            errs = [
                abs(s[f"predicted_{key}_ms"] - s[f"observed_{key}_ms"])
                for s in chunk
                if s.get(f"observed_{key}_ms") is not None
            ]
            row[f"{key}_mae_ms"] = round(statistics.fmean(errs), 2) if errs else None
        out.append(row)
    return out


def _start_vllm(replicas: int, work: Path) -> tuple[Any, list[str]]:
    """Real vLLM replicas of SmolLM2 (served as ``smollm2``) through kvgate's launcher."""
    from kvgate.engines import EngineConfig, Supervisor, plan_launch
    from kvgate.engines.model import resolve_model

    config = EngineConfig(
        engine="vllm", model=resolve_model("smollm2", name="smollm2"), run_dir=work, device="cpu"
    )
    plan = plan_launch(config, replicas)
    sup = Supervisor(plan, progress=False)
    sup.start()
    try:
        sup.wait_ready_blocking()
    except BaseException:
        sup.stop_blocking()
        raise
    return sup, list(plan.endpoints)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--skip", type=int, default=20, help="samples left out while it learns")
    ap.add_argument("--latency-profile", default="", help="latencyProfile: start calibrated")
    ap.add_argument("--sim-profile", default="qwen3-0.6b-h100")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    ap.add_argument("--window", type=int, default=20, help="cold-start window (samples)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="requests sent straight to each replica before the gateway starts (real vLLM's "
        "first requests on a fresh replica are several times slower)",
    )
    for key in _SHAPES["sim"]:
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    args = ap.parse_args()
    shape = {k: getattr(args, k) or v for k, v in _SHAPES[args.engine].items()}

    config = policy_config_text("predicted-latency")
    if args.latency_profile:
        config = config.replace(
            "    streamingMode: true\n",
            f"    streamingMode: true\n    latencyProfile: {args.latency_profile}\n",
        )
    work = Path(tempfile.mkdtemp(prefix="latency-quality-"))
    procs: list[Proc] = []
    ports: set[int] = set()
    supervisor = None
    model = "smollm2" if args.engine == "vllm" else "m"
    load_before = os.getloadavg()[0]
    try:
        sims: list[str] = []
        if args.engine == "vllm":
            supervisor, sims = _start_vllm(args.replicas, work)
        for i in range(args.replicas if args.engine == "sim" else 0):
            port = free_port("127.0.0.1", ports)
            ports.add(port)
            argv = kvgate_argv(
                "sim", "--port", str(port), "--model", "m", "--seed", str(i),
                "--profile", args.sim_profile,
            )  # fmt: skip
            procs.append(Proc(f"sim{i}", argv, work / f"sim{i}.log"))
            sims.append(f"http://127.0.0.1:{port}")
        wait_ready([(p, url + "/health") for p, url in zip(procs, sims, strict=False)], 60)
        for i, url in enumerate(sims if args.warmup else ()):
            warm = MixedParams(num_requests=args.warmup, **shape)
            sessions = tuple(mixed(warm, "completions", args.seed + 1000 + i))
            run_sync(
                RunConfig(base_url=url, model=model),
                Workload("warmup", "completions", sessions),
                LoadSpec(mode="poisson", rates=(args.rate,), max_requests=args.warmup),
            )
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
        params = MixedParams(num_requests=args.requests, **shape)
        workload = Workload("mixed", "completions", tuple(mixed(params, "completions", args.seed)))
        load = LoadSpec(mode="poisson", rates=(args.rate,), max_requests=args.requests)
        records, _ = run_sync(RunConfig(base_url=gw, model=model), workload, load)
    finally:
        for p in reversed(procs):
            p.stop()
        if supervisor is not None:
            supervisor.stop_blocking()
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
        "engine": args.engine,
        "workload": shape,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "requests": len(records),
        "errors": sum(1 for r in records if not r.ok),
        "samples": len(samples),
        "latency_profile": args.latency_profile or None,
        "rate": args.rate,
        "warmup_per_replica": args.warmup,
        "ttft": _errors(ttft),
        "tpot": _errors(tpot),
        "cold_start": _windows(samples, args.window),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
