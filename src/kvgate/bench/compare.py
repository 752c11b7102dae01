"""``kvgate bench compare``: the same workload through each routing policy on a fresh cluster.

For every policy: start N replicas (``kvgate sim`` or real vLLM, planned by
:func:`kvgate.engines.plan_launch`) and one ``kvgate serve --policy P`` in front of them, wait
for readiness with deadlines, scrape the replicas' counters, run the workload at the same
offered load, scrape again, stop everything. ``--front epp`` puts Envoy + ``kvgate epp``
in place of ``kvgate serve`` (:mod:`kvgate.bench.fronts`). External routers (``--external NAME=URL``) get
the same workload against their own backends (hit rate then comes from ``usage`` only).

Every replica publishes KV events to one collector address, bound by the gateway's precise
or oracle scorer when the policy has one (so publishing costs the same under every policy).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvgate.bench.fronts import FrontDidNotStart, FrontSpec, start_front
from kvgate.bench.procs import Proc, wait_in_rotation, wait_ready
from kvgate.bench.report import Summary, scrape_counters, summarize
from kvgate.bench.runner import LoadSpec, Progress, RequestRecord, RunConfig, run_sync, stage_rates
from kvgate.bench.workloads import Workload
from kvgate.errors import EngineError, KvgateError

DEFAULT_POLICIES: tuple[str, ...] = (
    "random",
    "round-robin",
    "least-queue",
    "llm-d-default",
    "precise",
    "oracle",
)

#: Plugin types that bind the KV-event collector socket.
_EVENT_SCORERS = ("precise-prefix-cache-scorer", "oracle-prefix-cache-scorer")

#: Used when kvgate.config.policies has no ``oracle`` policy: llm-d's default weights with the
#: oracle in place of the approximate prefix scorer.
ORACLE_POLICY_YAML = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: oracle-prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: oracle-prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: max-score-picker
"""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    engine: str = "sim"
    replicas: int = 4
    model: str = "Qwen/Qwen3-0.6B"
    sim_profile: str | None = "qwen3-0.6b-h100"
    block_size: int | None = 16
    num_gpu_blocks: int | None = None
    kv_cache_bytes: int | None = None  # vLLM
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    #: kvgate sim --speed (model seconds per wall second). The runner then offers load and
    #: records every time in model time, so figures stay comparable with real engines.
    speed: float = 1.0
    sim_args: tuple[str, ...] = ()  # extra flags for kvgate sim
    #: ``pd`` policies: replicas that prefill (None: half); the simulated KV link.
    prefill_replicas: int | None = None
    kv_link: str = "rdma"
    #: ``+cpu-tier`` policies: each replica's CPU tier in blocks (``--kv-offload-blocks``).
    cpu_offload_blocks: int | None = None
    gateway_args: tuple[str, ...] = ()
    ready_timeout_s: float | None = None


@dataclass(slots=True)
class PolicyRun:
    policy: str
    summary: Summary | None
    records: list[RequestRecord]
    skipped: str | None = None  # why the policy did not run
    replicas: list[str] = field(default_factory=list)


# --- policy configuration ----------------------------------------------------------------------


def policy_config(policy: str, zmq_endpoint: str, block_size: int | None) -> str | None:
    """YAML for ``kvgate serve --config-text`` when the policy listens to KV events (its
    collector endpoint and block size set) or is a config file (``*.yaml``, ``*.json``), else
    None (``--policy`` is enough)."""
    import yaml

    text: str | None = None
    from_file = policy.endswith((".yaml", ".yml", ".json"))
    if from_file:  # an EndpointPickerConfig file given as a policy
        text = Path(policy).read_text()
    else:
        try:
            from kvgate.config.policies import policy_config_text

            text = policy_config_text(policy)
        except (ImportError, KeyError, ValueError, KvgateError):
            text = None
    if text is None:
        if policy != "oracle":
            return None
        text = ORACLE_POLICY_YAML
    doc = yaml.safe_load(text)
    changed = False
    for plugin in doc.get("plugins") or ():
        if plugin.get("type") in _EVENT_SCORERS:
            params = plugin.setdefault("parameters", {}) or {}
            plugin["parameters"] = params
            events = params.setdefault("kvEventsConfig", {}) or {}
            params["kvEventsConfig"] = events
            events["zmqEndpoint"] = zmq_endpoint
            if plugin.get("type") == "oracle-prefix-cache-scorer" and block_size:
                params["blockSize"] = block_size
            changed = True
    if not changed:
        return text if from_file else None
    return str(yaml.safe_dump(doc, sort_keys=False))


# --- one policy --------------------------------------------------------------------------------


def _plan(
    cluster: ClusterSpec, run_dir: Path, collector: str, variant_args: tuple[str, ...] = ()
) -> Any:
    from kvgate.engines import plan_launch
    from kvgate.engines.base import EngineConfig, ModelSource

    if cluster.engine == "vllm":
        from kvgate.engines.model import resolve_model

        model = resolve_model(None if cluster.model == "builtin" else cluster.model)
    else:
        model = ModelSource(uri=cluster.model, name=cluster.model, path=None, tokenizer=None)
    config = EngineConfig(
        engine="vllm" if cluster.engine == "vllm" else "sim",
        model=model,
        run_dir=run_dir,
        block_size=cluster.block_size,
        num_gpu_blocks=cluster.num_gpu_blocks,
        kv_cache_bytes=cluster.kv_cache_bytes,
        max_num_seqs=cluster.max_num_seqs,
        max_num_batched_tokens=cluster.max_num_batched_tokens,
        max_model_len=cluster.max_model_len,
        kv_events=True,
        kv_events_collector=collector,
        sim_profile=cluster.sim_profile if cluster.engine == "sim" else None,
        extra_args=(*cluster.sim_args, *variant_args, "--speed", f"{cluster.speed:g}")
        if cluster.engine == "sim"
        else (),
    )
    return plan_launch(config, cluster.replicas)


def run_policy(
    policy: str,
    cluster: ClusterSpec,
    workload: Workload,
    load: LoadSpec,
    run_dir: Path,
    *,
    run_config: RunConfig | None = None,
    progress: Callable[[str], Progress] | None = None,
    log: Callable[[str], None] = print,
    front: FrontSpec | None = None,
    label: str | None = None,
    keep: list[Proc] | None = None,
) -> PolicyRun:
    """Start a fresh cluster and front door for ``policy``, run the workload, stop
    everything. ``label`` names the run in the report (default: the policy). With ``keep``,
    a run that completes hands its processes over (appended, in start order) instead of
    stopping them: the caller stops them (``kvgate bench compare --keep``)."""
    from kvgate.bench import variants
    from kvgate.engines.hosts import free_port

    front_spec = front or FrontSpec(args=cluster.gateway_args)
    name = label or policy
    variant = variants.parse_policy(policy)
    used: set[int] = set()
    zmq_port = free_port("127.0.0.1", used)
    used.add(zmq_port)
    collector = f"tcp://127.0.0.1:{zmq_port}"
    roles: list[str] = []
    try:
        if variant.pd and front_spec.kind != "serve":
            raise variants.VariantError("pd: runs behind kvgate serve (--front serve)")
        cpu_args = variants.sim_cpu_tier_args(variant, cluster.cpu_offload_blocks)
        plan = _plan(cluster, run_dir / "cluster", collector, tuple(cpu_args))
        if variant.pd:
            roles = variants.pd_roles(len(plan.replicas), cluster.prefill_replicas)
            plan = variants.with_pd_roles(plan, roles, cluster.kv_link)
    except variants.VariantError as exc:
        return PolicyRun(name, None, [], skipped=str(exc))
    for r in plan.replicas:
        used.add(r.port)

    def next_port() -> int:
        port = free_port("127.0.0.1", used)
        used.add(port)
        return port

    procs: list[Proc] = []
    kept = False
    try:
        for r in plan.replicas:
            procs.append(Proc(r.name, r.argv, r.log_path, r.env, r.unset_env))
        timeout = cluster.ready_timeout_s or plan.ready_timeout_s
        wait_ready([(p, r.ready_url) for p, r in zip(procs, plan.replicas, strict=True)], timeout)
        block_size = plan.replicas[0].block_size if plan.replicas else None
        config_text = variants.variant_config(
            variant,
            gpu_blocks=cluster.num_gpu_blocks,
            cpu_blocks=cluster.cpu_offload_blocks,
            block_size=block_size or 16,
        ) or policy_config(variant.base, f"tcp://*:{zmq_port}", block_size)
        policy_args = (
            ["--config-text", config_text]
            if config_text is not None
            else ["--policy", variant.base]
        )
        endpoints = plan.endpoints
        if roles:  # P/D: the endpoints with their llm-d.ai/role labels
            path = variants.endpoints_file(plan, roles, run_dir / "endpoints.yaml")
            policy_args += ["--endpoints-file", str(path)]
            endpoints = []
        try:
            started = start_front(front_spec, policy_args, endpoints, run_dir, next_port)
        except FrontDidNotStart as exc:
            return PolicyRun(name, None, [], skipped=str(exc))
        procs += started.procs
        gw_url = started.base_url
        log(f"--- {name}: dashboard at {dashboard_of(started.metrics_url)}")
        # Every replica must be in rotation before the clock starts.
        wait_in_rotation(started.metrics_url, len(plan.replicas), 30.0)
        before = scrape_counters(plan.endpoints)
        cfg = RunConfig(
            base_url=gw_url,
            model=plan.replicas[0].served_model_name,
            **_run_overrides(run_config),
        )
        scale = cluster.speed if cluster.engine == "sim" else 1.0
        records, _wall = run_sync(
            cfg,
            workload,
            load,
            progress(name) if progress else None,
            time_scale=scale,
            # counters count from the end of the warm-up
            after_warmup=lambda: before.update(scrape_counters(plan.endpoints)),
        )
        after = scrape_counters(plan.endpoints)
        names = {r.base_url: r.name for r in plan.replicas}
        summary = summarize(
            name,
            records,
            before=before,
            after=after,
            replica_names=names,
            rates=stage_rates(load, records),
            load=load.describe(),
            workload=workload.name,
            time_scale=scale,
        )
        with contextlib.suppress(OSError):
            summary.load_average_1m = os.getloadavg()[0]
        if keep is not None:
            keep.extend(procs)
            kept = True
        return PolicyRun(name, summary, records, replicas=plan.endpoints)
    finally:
        if not kept:
            for p in reversed(procs):
                p.stop()


def dashboard_of(metrics_url: str) -> str:
    """The front door's /dashboard beside its /metrics (the gateway's, or the EPP's port)."""
    base = metrics_url.split("/metrics", 1)[0]
    return base.rstrip("/") + "/dashboard"


def _run_overrides(cfg: RunConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return {
        "api_key": cfg.api_key,
        "request_timeout_s": cfg.request_timeout_s,
        "ignore_eos": cfg.ignore_eos,
        "temperature": cfg.temperature,
        "extra_body": cfg.extra_body,
        "stream_interval": cfg.stream_interval,
        "stop_when": cfg.stop_when,
    }


def run_external(
    name: str,
    url: str,
    workload: Workload,
    load: LoadSpec,
    *,
    model: str | None,
    run_config: RunConfig | None = None,
    progress: Callable[[str], Progress] | None = None,
) -> PolicyRun:
    cfg = RunConfig(base_url=url, model=model, **_run_overrides(run_config))
    records, _ = run_sync(cfg, workload, load, progress(name) if progress else None)
    summary = summarize(
        name,
        records,
        rates=stage_rates(load, records),
        load=load.describe(),
        workload=workload.name,
    )
    return PolicyRun(name, summary, records)


def machine_description() -> str:
    cpus = os.cpu_count() or 0
    try:
        load1 = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load1 = ""
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs{load1}, Python {platform.python_version()}"


def ensure_engine_ready(cluster: ClusterSpec) -> None:
    """Fail early with the fix when real vLLM is asked for but not installed."""
    if cluster.engine != "vllm":
        return
    try:
        from kvgate.engines.model import resolve_model
        from kvgate.engines.vllm import engine_python

        resolve_model(None if cluster.model == "builtin" else cluster.model)
        engine_python()
    except EngineError:
        raise
