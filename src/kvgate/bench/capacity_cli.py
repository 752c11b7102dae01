"""``kvgate bench capacity``: capacity at SLO per routing policy (:mod:`kvgate.bench.slo_capacity`).

Writes ``results.json`` (per policy: the capacity, the bracket and every probe with its hit
rate, balance, simulated replicas' lag share and load average) and, per
probe, ``<policy>/rate-<r>.json`` with ``vllm bench serve``'s result keys (goodput against
the SLOs as ``--goodput ttft:<ttft> tpot:<itl>``), and prints one line per policy.
Workloads: any of ``kvgate bench compare``'s, ``mixed`` (:mod:`kvgate.bench.mixed`), or a
ShareGPT file (``--dataset sharegpt FILE``, :mod:`kvgate.bench.sharegpt`).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgate.bench.workloads import Workload

if TYPE_CHECKING:
    from kvgate.bench.report import Summary

DEFAULT_CAPACITY_POLICIES = ("llm-d-default", "predicted-latency")


def register(sub: Any) -> None:
    """Add the ``capacity`` subcommand to ``kvgate bench``'s subparsers."""
    cap = sub.add_parser(
        "capacity",
        help="per policy, the highest request rate whose TTFT p90 and ITL p90 meet SLOs",
    )
    s = cap.add_argument_group("SLOs and search")
    s.add_argument(
        "--policies", help=f"comma-separated (default: {','.join(DEFAULT_CAPACITY_POLICIES)})"
    )
    s.add_argument("--slo-ttft-p90-ms", type=float, default=1000.0, help="TTFT p90 limit (1000)")
    s.add_argument("--slo-itl-p90-ms", type=float, default=50.0, help="ITL p90 limit (50)")
    s.add_argument(
        "--max-error-share", type=float, default=0.01, help="failed requests allowed (0.01)"
    )
    s.add_argument("--rate-lo", type=float, default=0.5, help="lowest rate probed, req/s (0.5)")
    s.add_argument("--rate-hi", type=float, default=32.0, help="highest rate probed (32)")
    s.add_argument("--steps", type=int, default=4, help="bisection probes after the ends (4)")
    s.add_argument(
        "--probe-requests",
        type=int,
        help="at most this many requests per probe (default: 300, or without a bound when "
        "--probe-duration is given, so a probe offers rate x duration requests)",
    )
    s.add_argument("--probe-duration", type=float, help="seconds of arrivals per probe, at most")
    s.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_false",
        help="let a probe whose miss is already settled (errors, or enough TTFTs over the "
        "limit, once its arrivals end) drain its backlog instead of stopping it",
    )
    w = cap.add_argument_group("workload")
    w.add_argument("--workload", default="mixed", help="mixed (default) or a compare workload")
    w.add_argument(
        "-W", "--workload-param", action="append", default=[], metavar="KEY=VALUE",
        help="a workload parameter, e.g. -W prompt_median=2000",
    )  # fmt: skip
    w.add_argument(
        "--dataset", nargs=2, metavar=("KIND", "FILE"), help="sharegpt FILE: ShareGPT JSON"
    )
    w.add_argument("--api", choices=("completions", "chat"), default="completions")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--request-timeout", type=float, default=300.0)
    w.add_argument(
        "--stream-interval", type=int, default=1, metavar="N",
        help="tokens per streamed chunk (vLLM's stream_interval); ITL is divided per token",
    )  # fmt: skip
    c = cap.add_argument_group("cluster")
    c.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    c.add_argument("--replicas", type=int, default=4)
    c.add_argument("--model", default="Qwen/Qwen3-0.6B")
    c.add_argument("--profile", default="qwen3-0.6b-h100", help="simulator profile")
    c.add_argument("--num-gpu-blocks", type=int)
    c.add_argument("--block-size", type=int, default=16)
    c.add_argument("--speed", type=float, default=1.0, help="simulator --speed")
    c.add_argument("--sim-arg", action="append", default=[], metavar="ARG")
    c.add_argument("--gateway-arg", action="append", default=[], metavar="ARG")
    cap.add_argument("--output", type=Path, help="write results here")
    cap.set_defaults(func=cmd_capacity)


DEFAULT_PROBE_REQUESTS = 300


def probe_request_bound(probe_requests: int | None, probe_duration_s: float | None) -> int | None:
    """The most requests a probe issues: ``--probe-requests``; else none when a duration
    bounds the probe (it then offers rate x duration requests, Poisson); else 300."""
    if probe_requests is not None:
        if probe_requests < 1:
            raise SystemExit(f"error: --probe-requests: expected >= 1, got {probe_requests}")
        return probe_requests
    if probe_duration_s is not None:
        if probe_duration_s <= 0:
            raise SystemExit(f"error: --probe-duration: expected > 0, got {probe_duration_s}")
        return None
    return DEFAULT_PROBE_REQUESTS


def requests_to_draw(bound: int | None, probe_duration_s: float | None, rate_hi: float) -> int:
    """How many requests ``mixed`` and ShareGPT draw: the bound, or enough for the top rate's
    probe to run its whole duration without repeating one: its Poisson count's mean plus six
    standard deviations (lower rates need fewer; a longer draw would be cycled, not cut)."""
    if bound is not None:
        return bound
    assert probe_duration_s is not None
    mean = rate_hi * probe_duration_s
    return math.ceil(mean + 6 * math.sqrt(mean)) + 10


def build_capacity_workload(args: argparse.Namespace) -> Workload:
    """The workload of the flags: a ShareGPT file, ``mixed`` or another bench workload;
    ``mixed`` and ShareGPT draw :func:`requests_to_draw` requests unless ``-W num_requests``."""
    from kvgate.bench import workloads

    params: dict[str, Any] = workloads.parse_params(args.workload_param)
    name = args.workload
    if args.dataset:
        kind, path = args.dataset
        if kind != "sharegpt":
            raise SystemExit(f"error: --dataset: expected sharegpt FILE, got {kind!r}")
        name = "sharegpt"
        params = {"path": path, **params}
    if name in ("mixed", "sharegpt"):
        bound = probe_request_bound(args.probe_requests, args.probe_duration)
        drawn = requests_to_draw(bound, args.probe_duration, args.rate_hi)
        params = {"num_requests": drawn, **params}
    try:
        return workloads.build_workload(name, params, api=args.api, seed=args.seed)
    except workloads.WorkloadError as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_capacity(args: argparse.Namespace) -> int:
    from kvgate.bench.compare import ClusterSpec, ensure_engine_ready, run_policy
    from kvgate.bench.runner import LoadSpec, RunConfig
    from kvgate.bench.slo_capacity import (
        Probe,
        SettledMiss,
        SLOTarget,
        evaluate,
        search_capacity,
    )

    workload = build_capacity_workload(args)
    max_requests = probe_request_bound(args.probe_requests, args.probe_duration)
    policies = [p for p in (args.policies or ",".join(DEFAULT_CAPACITY_POLICIES)).split(",") if p]
    slo = SLOTarget(args.slo_ttft_p90_ms, args.slo_itl_p90_ms, args.max_error_share)
    cluster = ClusterSpec(
        engine=args.engine,
        replicas=args.replicas,
        model=args.model,
        sim_profile=args.profile,
        block_size=args.block_size,
        num_gpu_blocks=args.num_gpu_blocks,
        speed=args.speed,
        sim_args=tuple(a for s in args.sim_arg for a in shlex.split(s)),
        gateway_args=tuple(a for s in args.gateway_arg for a in shlex.split(s)),
    )
    ensure_engine_ready(cluster)
    out_dir: Path = args.output or Path("kvgate-bench") / time.strftime("capacity-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.stream_interval < 1:
        raise SystemExit(f"error: --stream-interval: expected >= 1, got {args.stream_interval}")
    run_config = RunConfig(
        base_url="", request_timeout_s=args.request_timeout, stream_interval=args.stream_interval
    )
    extent = " or ".join(
        part
        for part in (
            f"{max_requests} requests" if max_requests is not None else "",
            f"{args.probe_duration:g} s of arrivals" if args.probe_duration is not None else "",
        )
        if part
    )
    print(
        f"capacity at TTFT p90 <= {slo.ttft_p90_ms:g} ms, ITL p90 <= {slo.itl_p90_ms:g} ms: "
        f"workload {workload.name}, {extent} a probe, rates "
        f"{args.rate_lo:g}..{args.rate_hi:g} req/s, at most {args.steps + 2} probes a policy"
    )
    results = []
    for policy in policies:
        label = Path(policy).stem if policy.endswith((".yaml", ".yml", ".json")) else policy

        def measure(rate: float, policy: str = policy, label: str = label) -> Probe:
            load = LoadSpec(
                mode="poisson",
                rates=(rate,),
                max_requests=max_requests,
                duration_s=args.probe_duration,
                seed=args.seed,
                cycle=True,
            )
            settled = SettledMiss(slo) if args.early_stop else None
            run = run_policy(
                policy, cluster, workload, load, out_dir / label / f"rate-{rate:g}",
                run_config=replace(run_config, stop_when=settled), label=label,
                log=lambda _line: None,
            )  # fmt: skip
            if run.summary is None:
                return Probe(rate, 0, 0, None, None, False, skipped=run.skipped)
            probe = evaluate(rate, run.records, slo)
            probe.context = _context(run.summary)
            if settled is not None and settled.reason:
                probe.context["stopped_early"] = settled.reason
            _write_vllm(out_dir / label / f"rate-{rate:g}.json", probe, label, workload, args)
            verdict = "meets" if probe.meets else "misses"
            print(
                f"  {label} @ {rate:.3g} req/s: TTFT p90 {_ms(probe.ttft_p90_ms)}, ITL p90 "
                f"{_ms(probe.itl_p90_ms)}, {probe.errors} errors -> {verdict}"
                f"{_describe(probe.context)}",
                flush=True,
            )
            return probe

        found = search_capacity(
            label, measure, rate_lo=args.rate_lo, rate_hi=args.rate_hi, steps=args.steps
        )
        results.append(found)
        bound = "" if found.bracketed else " (at least: the top of the range met the SLOs)"
        print(f"{label}: {found.capacity_rps:.3g} req/s at SLO{bound}", flush=True)
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "slo": {"ttft_p90_ms": slo.ttft_p90_ms, "itl_p90_ms": slo.itl_p90_ms,
                        "max_error_share": slo.max_error_share},
                "workload": workload.name,
                "workload_params": dict(workload.params),
                "probe_requests": max_requests,
                "probe_duration_s": args.probe_duration,
                "stream_interval": args.stream_interval,
                "results": [r.to_json() for r in results],
            },
            indent=2,
            default=str,
        )
    )  # fmt: skip
    print(f"results in {out_dir}")
    return 0


def _context(summary: Summary) -> dict[str, Any]:
    """What a probe's verdict should be read beside."""
    return {
        "hit_rate": summary.hit_rate,
        "balance_max_over_mean": summary.balance_max_over_mean,
        "replica_lag_share": summary.replica_lag_share,
        "load_average_1m": summary.load_average_1m,
    }


def _describe(context: dict[str, Any]) -> str:
    parts = []
    if context.get("hit_rate") is not None:
        parts.append(f"hit rate {context['hit_rate']:.0%}")
    if context.get("balance_max_over_mean") is not None:
        parts.append(f"balance {context['balance_max_over_mean']:.2f}")
    if context.get("replica_lag_share") is not None:
        parts.append(f"replica lag {context['replica_lag_share']:.1%}")
    if context.get("load_average_1m") is not None:
        parts.append(f"load {context['load_average_1m']:.1f}")
    if context.get("stopped_early"):
        parts.append(f"stopped once settled: {context['stopped_early']}")
    return f" ({', '.join(parts)})" if parts else ""


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _write_vllm(
    path: Path, probe: Any, label: str, workload: Workload, args: argparse.Namespace
) -> None:
    """One probe as ``vllm bench serve --save-result`` writes a run."""
    doc = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": f"kvgate:{label}",
        "model_id": args.model,
        "num_prompts": probe.requests,
        "request_rate": probe.rate,
        "burstiness": 1.0,
        "max_concurrency": None,
        "dataset": workload.name,
        **probe.vllm,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
