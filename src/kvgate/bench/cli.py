"""``kvgate bench run`` and ``kvgate bench compare`` (heavy modules are imported inside)."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgate.bench.presets import PRESETS, Preset

if TYPE_CHECKING:
    from collections.abc import Callable

    from kvgate.bench.procs import Proc


def _add_load_args(p: argparse.ArgumentParser) -> None:
    from kvgate.bench.workloads import WORKLOAD_NAMES

    g = p.add_argument_group("workload and load")
    g.add_argument("--workload", choices=WORKLOAD_NAMES, help="workload name")
    g.add_argument(
        "-W",
        "--workload-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a workload parameter (see docs/bench.md), e.g. -W num_groups=32",
    )
    g.add_argument("--api", choices=("completions", "chat"), default="completions")
    g.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    g.add_argument("--rate", help="requests (sessions) per second; a ladder as 3,10,20")
    g.add_argument("--arrival", choices=("poisson", "constant"), help="open-loop arrivals")
    g.add_argument(
        "--concurrency", type=int, help="closed loop: this many clients instead of a rate"
    )
    g.add_argument("--stage-duration", type=float, help="seconds per rate of a ladder")
    g.add_argument("--stage-requests", type=int, help="sessions per rate of a ladder")
    g.add_argument("--num-requests", type=int, help="stop issuing after this many requests")
    g.add_argument("--duration", type=float, help="stop issuing after this many seconds")
    g.add_argument(
        "--cycle",
        action="store_true",
        default=None,
        help="repeat the workload's sessions until --num-requests / --duration",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--request-timeout", type=float, default=300.0)
    g.add_argument("--api-key", help="sent as Authorization: Bearer")
    g.add_argument("--no-ignore-eos", action="store_true", help="let the model stop early")
    g.add_argument(
        "--stream-interval",
        type=int,
        metavar="N",
        help="ask the server for N tokens per streamed chunk (vLLM's stream_interval; "
        "the first token still comes alone); ITL is divided per token",
    )
    g.add_argument("--output", type=Path, help="write results.json, report.md and plots here")
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench", help="benchmark routers: run a workload, compare policies"
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])

    run = sub.add_parser("run", help="drive one OpenAI-compatible base URL with a workload")
    run.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    run.add_argument("--name", default="run", help="label of this run in the report")
    run.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="target is kvgate sim --speed F: offer load and report times in model time",
    )
    run.add_argument(
        "--replica-metrics",
        action="append",
        default=[],
        metavar="URL",
        help="a replica's base URL whose /metrics give hit rate and balance (repeatable)",
    )
    _add_load_args(run)
    run.set_defaults(func=cmd_run)

    cmp = sub.add_parser(
        "compare",
        help="each routing policy on a fresh cluster, same workload, side-by-side table",
    )
    cmp.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    cmp.add_argument(
        "--scale", action="store_true", help="llm-d's published benchmark shape (long)"
    )
    cmp.add_argument(
        "--policies",
        help="comma-separated (default: random,round-robin,least-queue,llm-d-default,precise,oracle)",
    )
    cmp.add_argument("--replicas", type=int)
    cmp.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="also run the workload against another router's base URL",
    )
    cmp.add_argument("--profile", help="simulator profile (e.g. qwen3-0.6b-h100)")
    cmp.add_argument("--num-gpu-blocks", type=int, help="KV blocks per simulated replica")
    cmp.add_argument("--block-size", type=int)
    cmp.add_argument("--kv-cache-bytes", type=int, help="vLLM: --kv-cache-memory-bytes per replica")
    cmp.add_argument("--speed", type=float, help="simulator --speed (model time / wall time)")
    cmp.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra kvgate sim argument(s), shell-split",
    )
    cmp.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra kvgate serve argument(s), shell-split",
    )
    cmp.add_argument(
        "--front",
        choices=("serve", "epp"),
        default="serve",
        help="the front door: kvgate serve (default), or Envoy + kvgate epp (ext_proc)",
    )
    cmp.add_argument(
        "--keep",
        action="store_true",
        help="keep the last policy's cluster and front door up after the report, for a look "
        "at its /dashboard, until Ctrl-C",
    )
    cmp.add_argument(
        "--prefill-replicas",
        type=int,
        help="pd policy: replicas that prefill (default: half); the rest decode",
    )
    cmp.add_argument(
        "--kv-link",
        choices=("rdma", "nvlink"),
        help="pd policy: the simulated KV link between prefill and decode (default rdma)",
    )
    cmp.add_argument(
        "--cpu-offload-blocks",
        type=int,
        help="+cpu-tier policies: each replica's CPU KV tier in blocks (--kv-offload-blocks)",
    )
    cmp.add_argument(
        "--unloaded",
        action="store_true",
        help="multi-tenant: also run the interactive tenant alone per policy (the reference)",
    )
    _add_load_args(cmp)
    cmp.set_defaults(func=cmd_compare)

    from kvgate.bench import capacity_cli

    capacity_cli.register(sub)


# --- helpers -------------------------------------------------------------------------------------


def _rates(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if not text:
        return default
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(
            f"error: --rate: expected numbers like 5 or 3,10,20, got {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise SystemExit(f"error: --rate: expected positive numbers, got {text!r}")
    return rates


def _load_spec(
    args: argparse.Namespace, preset: Preset | None, num_sessions: int, timed: bool = False
) -> Any:
    """The load from the flags over the preset's; ``timed``: the workload carries its own
    arrival times (trace, multi-tenant), so rate flags would be ignored and are refused."""
    from kvgate.bench.runner import LoadSpec

    if timed:
        for flag, value in (
            ("--rate", args.rate),
            ("--concurrency", args.concurrency),
            ("--arrival", args.arrival),
            ("--stage-duration", args.stage_duration),
            ("--stage-requests", args.stage_requests),
            ("--cycle", args.cycle),
        ):
            if value is not None:
                raise SystemExit(
                    f"error: {flag}: this workload carries its own arrival times "
                    "(set its -W rate parameters instead)"
                )
        return LoadSpec(
            mode="trace",
            max_requests=args.num_requests,
            duration_s=args.duration,
            seed=args.seed,
        )

    rates = _rates(args.rate, preset.rates if preset else (1.0,))
    if args.concurrency:
        mode = "concurrency"
    else:
        mode = args.arrival or (preset.arrival if preset else "poisson")
    cycle = args.cycle if args.cycle is not None else (preset.cycle if preset else False)
    stage_duration = args.stage_duration
    if stage_duration is None and preset is not None and args.rate is None:
        stage_duration = preset.stage_duration_s
    num = (
        args.num_requests
        if args.num_requests is not None
        else (preset.num_requests if preset else None)
    )
    duration = (
        args.duration if args.duration is not None else (preset.duration_s if preset else None)
    )
    if len(rates) > 1 and stage_duration is None and args.stage_requests is None:
        raise SystemExit("error: a rate ladder needs --stage-duration or --stage-requests")
    if cycle and num is None and duration is None:
        if stage_duration is not None:
            duration = stage_duration * len(rates)
        else:
            raise SystemExit("error: --cycle needs --num-requests or --duration")
    return LoadSpec(
        mode=mode,  # type: ignore[arg-type]  # argparse choices
        rates=rates,
        stage_duration_s=stage_duration,
        stage_requests=args.stage_requests,
        concurrency=args.concurrency or 1,
        max_requests=num,
        duration_s=duration,
        seed=args.seed,
        cycle=cycle,
    )


def _progress_factory(args: argparse.Namespace) -> Any:
    if args.no_progress or not sys.stderr.isatty():
        return None
    from kvgate.bench.runner import RichProgress

    return RichProgress


def _print_table(summaries: Any) -> None:
    from rich.console import Console

    from kvgate.bench.report import lag_warning, rich_table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: do not squeeze the columns
    console.print(rich_table(summaries))
    lag = lag_warning(summaries)
    if lag:
        print(lag, file=sys.stderr)


def _stream_interval(value: int | None) -> int:
    if value is None:
        return 1
    if value < 1:
        raise SystemExit(f"error: --stream-interval must be at least 1, got {value}")
    return value


# --- commands ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from kvgate.bench.report import scrape_counters, summarize, write_outputs
    from kvgate.bench.runner import RunConfig, run_sync, stage_rates
    from kvgate.bench.workloads import build_workload, parse_params

    if not args.workload:
        raise SystemExit("error: --workload is required")
    workload = build_workload(
        args.workload, parse_params(args.workload_param), api=args.api, seed=args.seed
    )
    load = _load_spec(args, None, len(workload.sessions), timed=workload.is_trace)
    cfg = RunConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        request_timeout_s=args.request_timeout,
        ignore_eos=not args.no_ignore_eos,
        stream_interval=_stream_interval(args.stream_interval),
    )
    factory = _progress_factory(args)
    before = scrape_counters(args.replica_metrics) if args.replica_metrics else None
    records, _ = run_sync(
        cfg,
        workload,
        load,
        factory(args.name) if factory else None,
        time_scale=args.time_scale,
        after_warmup=(
            (lambda: before.update(scrape_counters(args.replica_metrics)))
            if before is not None
            else None
        ),
    )
    after = scrape_counters(args.replica_metrics) if args.replica_metrics else None
    summary = summarize(
        args.name,
        records,
        before=before,
        after=after,
        rates=stage_rates(load, records),
        load=load.describe(),
        workload=workload.name,
        time_scale=args.time_scale,
    )
    _print_table([summary])
    sections = []
    if workload.name == "multi-tenant":
        from kvgate.bench.tenant_report import tenant_markdown, tenant_rows

        sections.append(tenant_markdown(tenant_rows(args.name, records, args.time_scale)))
        print(sections[-1])
    if args.output:
        if workload.name == "multi-tenant":
            _write_objectives(workload, args.output)  # what the gateway under test needs
        meta = {
            "command": "kvgate " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "workload": f"{workload.name} {dict(workload.params)}",
            "load": load.describe(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_outputs(
            args.output,
            [summary],
            {args.name: records},
            meta=meta,
            baseline=None,
            title=f"kvgate bench run: {workload.name}",
            sections=sections,
        )
        print(f"wrote {args.output}/results.json, report.md, ttft_cdf.png")
    return 0 if summary.requests and summary.errors < summary.requests else 1


def _fill_capacity(params: dict[str, Any], cluster: Any) -> Any:
    """The pool's estimated capacity for the batch tenant's requests; fills ``capacity_rps``
    into ``params`` unless -W capacity_rps or batch_rate set the load already."""
    from kvgate.bench.capacity import estimate_capacity
    from kvgate.bench.workloads import build_workload

    # the workload's own parsing of the values (and its defaults), from an unloaded build
    p = build_workload("multi-tenant", {**params, "interactive_only": True}).params
    estimate = None
    if cluster.engine == "sim" and cluster.sim_profile:
        estimate = estimate_capacity(
            cluster.sim_profile,
            cluster.replicas,
            p["batch_prompt_len"],
            p["batch_output_len"],
            num_gpu_blocks=cluster.num_gpu_blocks,
            block_size=cluster.block_size,
            max_num_seqs=cluster.max_num_seqs,
        )
    if p["capacity_rps"] <= 0 and p["batch_rate"] <= 0:
        if estimate is None:
            raise SystemExit(
                "error: -W capacity_rps: expected the pool's capacity in requests/s "
                "(only simulated clusters have an estimate)"
            )
        params["capacity_rps"] = round(estimate.requests_per_s, 3)
    return estimate


def _write_objectives(workload: Any, out_dir: Path) -> Path:
    from kvgate.bench.tenants import objectives_yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "objectives.yaml"
    path.write_text(objectives_yaml(workload.params))
    return path


def _preset_for(args: argparse.Namespace) -> Preset:
    if args.workload in PRESETS and not args.scale and args.engine == "sim":
        preset = PRESETS[args.workload]  # multi-tenant, long-prompt, short-prompt, ...
    elif args.scale:
        preset = PRESETS["scale"]
    elif args.engine == "vllm":
        preset = PRESETS["vllm"]
    else:
        preset = PRESETS["default"]
    if args.engine == "vllm" and preset.engine != "vllm":
        preset = replace(preset, engine="vllm")
    return preset


def cmd_compare(args: argparse.Namespace) -> int:
    from kvgate.bench.compare import (
        DEFAULT_POLICIES,
        ClusterSpec,
        machine_description,
        run_external,
        run_policy,
    )
    from kvgate.bench.fronts import FrontSpec
    from kvgate.bench.report import comparison_line, pick_baseline, write_outputs
    from kvgate.bench.runner import RunConfig
    from kvgate.bench.tenant_report import UNLOADED_SUFFIX, tenant_markdown, tenant_rows
    from kvgate.bench.tenants import MultiTenantParams, batch_rate
    from kvgate.bench.workloads import build_workload, parse_params

    preset = _preset_for(args)
    wl_name = args.workload or preset.workload
    params: dict[str, Any] = dict(preset.workload_params) if wl_name == preset.workload else {}
    params.update(parse_params(args.workload_param))
    sim_args = [a for s in args.sim_arg for a in shlex.split(s)] + list(preset.sim_args)
    cluster = ClusterSpec(
        engine=preset.engine,
        replicas=args.replicas or preset.replicas,
        model=args.model or preset.model,
        sim_profile=args.profile or preset.profile,
        block_size=args.block_size or preset.block_size,
        num_gpu_blocks=args.num_gpu_blocks or preset.num_gpu_blocks,
        kv_cache_bytes=args.kv_cache_bytes or preset.kv_cache_bytes,
        max_model_len=preset.max_model_len,
        sim_args=tuple(sim_args),
        speed=args.speed if args.speed is not None else preset.speed,
        gateway_args=tuple(a for s in args.gateway_arg for a in shlex.split(s)),
        prefill_replicas=args.prefill_replicas or preset.prefill_replicas,
        kv_link=args.kv_link or preset.kv_link,
        cpu_offload_blocks=args.cpu_offload_blocks or preset.cpu_offload_blocks,
    )
    multi = wl_name == "multi-tenant"
    capacity = _fill_capacity(params, cluster) if multi else None
    workload = build_workload(wl_name, params, api=args.api, seed=args.seed)
    load = _load_spec(args, preset, len(workload.sessions), timed=workload.is_trace)
    if args.unloaded and not multi:
        raise SystemExit("error: --unloaded: only the multi-tenant workload has a reference run")
    unloaded = (
        build_workload(wl_name, {**params, "interactive_only": True}, api=args.api, seed=args.seed)
        if args.unloaded
        else None
    )
    policies = (
        [p.strip() for p in args.policies.split(",") if p.strip()]
        if args.policies
        else list(preset.policies or DEFAULT_POLICIES)
    )
    externals = []
    for item in args.external:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise SystemExit(f"error: --external {item!r}: expected NAME=URL")
        externals.append((name, url))

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.output or Path("kvgate-bench") / f"compare-{stamp}"
    front = FrontSpec(
        kind=args.front,
        args=cluster.gateway_args,
        objectives=_write_objectives(workload, out_dir) if multi else None,
    )
    run_cfg = RunConfig(
        base_url="",
        api_key=args.api_key,
        request_timeout_s=args.request_timeout,
        ignore_eos=not args.no_ignore_eos,
        stream_interval=_stream_interval(
            args.stream_interval if args.stream_interval is not None else preset.stream_interval
        ),
    )
    factory = _progress_factory(args)
    print(
        f"kvgate bench compare: {cluster.replicas} x {cluster.engine}"
        f"{' ' + cluster.sim_profile if cluster.engine == 'sim' and cluster.sim_profile else ''}, "
        f"workload {workload.name} ({workload.num_requests} requests, "
        f"prompt tokens {min(workload.prompt_tokens())}-{max(workload.prompt_tokens())}), "
        f"{load.describe()}; policies {', '.join(policies)}",
        file=sys.stderr,
    )
    runs = []
    skipped: dict[str, str] = {}
    kept: list[Proc] = []  # --keep: the last run's processes, stopped after the report

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def keep_for(last: bool) -> list[Proc] | None:
        if not (args.keep and last):
            return None
        for proc in reversed(kept):  # an earlier kept run (skipped later) goes now
            proc.stop()
        kept.clear()
        return kept

    for policy in policies:
        print(f"--- {policy}: starting a fresh cluster", file=sys.stderr)
        last_policy = policy == policies[-1]
        run = run_policy(
            policy,
            cluster,
            workload,
            load,
            out_dir / "runs" / _run_name(policy),
            run_config=run_cfg,
            progress=factory,
            front=front,
            log=say,
            keep=keep_for(last_policy and unloaded is None),
        )
        if run.skipped:
            print(f"--- {policy}: skipped: {run.skipped}", file=sys.stderr)
            skipped[policy] = run.skipped
            continue
        runs.append(run)
        if unloaded is not None:
            print(f"--- {policy}: unloaded reference, a fresh cluster", file=sys.stderr)
            ref = run_policy(
                policy,
                cluster,
                unloaded,
                load,
                out_dir / "runs" / f"{_run_name(policy)}-unloaded",
                run_config=run_cfg,
                progress=factory,
                front=front,
                label=policy + UNLOADED_SUFFIX,
                log=say,
                keep=keep_for(last_policy),
            )
            if ref.skipped:
                skipped[ref.policy] = ref.skipped
            else:
                runs.append(ref)
    for name, url in externals:
        print(f"--- {name}: external router {url}", file=sys.stderr)
        runs.append(
            run_external(
                name, url, workload, load, model=args.model, run_config=run_cfg, progress=factory
            )
        )
    summaries = [r.summary for r in runs if r.summary is not None]
    _print_table(summaries)
    sections = []
    if multi and runs:
        scale = cluster.speed if cluster.engine == "sim" else 1.0
        rows = [row for r in runs for row in tenant_rows(r.policy, r.records, scale)]
        offered = batch_rate(MultiTenantParams(**workload.params))
        sections.append(tenant_markdown(rows, capacity=capacity, batch_rate_rps=offered))
        print(sections[-1])
    meta = {
        "command": "kvgate " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "workload": f"{workload.name} {dict(workload.params)}",
        "load": load.describe(),
        "cluster": {
            "engine": cluster.engine,
            "replicas": cluster.replicas,
            "profile": cluster.sim_profile,
            "num_gpu_blocks": cluster.num_gpu_blocks,
            "block_size": cluster.block_size,
            "kv_cache_bytes": cluster.kv_cache_bytes,
            "sim_args": list(cluster.sim_args),
        },
        "machine": machine_description(),
        "started": stamp,
        "skipped": skipped,
        "front": args.front,
    }
    title = f"kvgate bench compare: {workload.name}, {cluster.replicas} × {cluster.engine}"
    baseline = pick_baseline([s.policy for s in summaries])
    write_outputs(
        out_dir,
        summaries,
        {r.policy: r.records for r in runs},
        meta=meta,
        baseline=baseline,
        title=title,
        sections=sections,
    )
    base = next((s for s in summaries if s.policy == baseline), None)
    if base is not None:
        for s in summaries:
            if s is not base:
                print(f"{s.policy} vs {base.policy}: {comparison_line(s, base)}")
    print(
        f"wrote {out_dir}/results.json, report.md, ttft_cdf.png, itl_cdf.png, "
        "ttft_throughput_vs_rate.png"
    )
    if kept:
        _hold(kept, say)
    return 0 if summaries else 1


def _hold(procs: list[Proc], say: Callable[[str], None]) -> None:
    """--keep: leave the last cluster up until Ctrl-C, then stop it (last started first)."""
    import time

    say("--keep: the last cluster stays up (its dashboard URL is above); Ctrl-C stops it")
    try:
        while all(p.alive() for p in procs):
            time.sleep(0.5)
        say("--keep: a process of the kept cluster exited; stopping the rest")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            proc.stop()


def _run_name(policy: str) -> str:
    """A policy's folder under ``runs/``: a config file's stem, else its name."""
    if policy.endswith((".yaml", ".yml", ".json")):
        return Path(policy).stem
    return policy
