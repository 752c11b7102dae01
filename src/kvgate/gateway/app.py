"""Assemble a :class:`Gateway` from ``kvgate serve`` flags and run it until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from kvgate.durations import parse_duration
from kvgate.endpoints import outlier_cli
from kvgate.endpoints.file import EndpointsFileError, EndpointsFileWatcher
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.endpoints.scrape import MetricNames, Scraper
from kvgate.endpoints.static import EndpointURLError, specs_from_urls
from kvgate.errors import KvgateError
from kvgate.gateway.auth import load_api_keys
from kvgate.gateway.routes import Gateway, GatewaySettings
from kvgate.heap import freeze_startup_heap
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol.build import build_request_control, load_objectives
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.requestcontrol.reqlog import configure_logging
from kvgate.scheduling.scheduler import Scheduler

log = logging.getLogger("kvgate.gateway")

DEFAULT_POLICY = "llm-d-default"


class UsageError(KvgateError):
    """A command-line flag is wrong; the message names it and what is expected."""


def duration_s(text: str, flag: str) -> float:
    value = parse_duration(str(text))
    if value is None or value < 0:
        raise UsageError(f"{flag}: expected a duration such as 50ms, 2s or 1m, got {text!r}")
    return value


def load_scheduler_config(config: Path | None, config_text: str | None, policy: str | None) -> Any:
    """The PickerConfig from --config, --config-text or --policy (default llm-d-default)."""
    from kvgate.config import load_picker_config, load_scheduler_source
    from kvgate.config.policies import POLICY_NAMES, policy_config_text

    given = [x for x in (config, config_text, policy) if x is not None]
    if len(given) > 1:
        raise UsageError("give only one of --config, --config-text and --policy")
    if config is not None:
        return load_scheduler_source(config)
    if config_text is not None:
        return load_picker_config(text=config_text)
    name = policy or DEFAULT_POLICY
    if name not in POLICY_NAMES:
        raise UsageError(f"--policy: unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
    return load_picker_config(text=policy_config_text(name))


def build_scheduler_from(
    picker_config: Any,
    *,
    seed: int | None = None,
    tokenizer: str | Path | None = None,
    offline: bool = False,
) -> Scheduler:
    """``tokenizer``/``offline``: ``--tokenizer`` (a path or a model name) and ``--offline``."""
    from kvgate.config import build_scheduler
    from kvgate.kvcache.tokenize import tokenizer_services
    from kvgate.kvcache.tokenizer_files import TokenizerNotFoundError

    ctx = PluginContext(rng=random.Random(seed))
    try:
        ctx.services.update(tokenizer_services(tokenizer, offline=offline))
    except TokenizerNotFoundError as exc:
        raise UsageError(f"--tokenizer: {exc}") from exc
    scheduler: Scheduler = build_scheduler(picker_config, ctx)
    return scheduler


def metric_names_from_args(args: argparse.Namespace) -> MetricNames:
    try:
        return MetricNames.from_flags(
            queued=args.total_queued_requests_metric,
            running=args.total_running_requests_metric,
            kv_usage=args.kv_cache_usage_percentage_metric,
            lora_info=args.lora_info_metric,
            cache_info=args.cache_info_metric,
        )
    except ValueError as exc:
        raise UsageError(f"metric name flag: {exc}") from exc


def build_gateway(
    args: argparse.Namespace,
    scheduler: Scheduler,
    *,
    picker_config: Any = None,
    static: Sequence[EndpointSpec] | None = None,
    models: frozenset[str] = frozenset(),
    service_path: str | None = None,
    api_keys: frozenset[str] | None = None,
) -> Gateway:
    """A Gateway from serve flags; ``static`` replaces ``--endpoint`` when given (kvgate up)."""
    try:
        specs = list(static) if static is not None else specs_from_urls(args.endpoint)
    except EndpointURLError as exc:
        raise UsageError(f"--endpoint: {exc}") from exc
    pool = EndpointPool()
    watcher = None
    if args.endpoints_file is not None:
        watcher = EndpointsFileWatcher(pool, args.endpoints_file, static=specs)
        try:
            watcher.load_now()
        except EndpointsFileError as exc:
            raise UsageError(f"--endpoints-file: {exc}") from exc
    else:
        pool.set_endpoints(specs)
    if not len(pool) and watcher is None:
        raise UsageError("give at least one --endpoint URL or an --endpoints-file")
    interval = duration_s(args.refresh_metrics_interval, "--refresh-metrics-interval")
    if interval <= 0:
        raise UsageError("--refresh-metrics-interval: must be > 0")
    scraper_args: dict[str, Any] = {
        "interval_s": interval,
        "names": metric_names_from_args(args),
        "scheme": args.model_server_metrics_scheme,
        "verify_tls": not args.model_server_metrics_https_insecure_skip_verify,
        "staleness_s": duration_s(
            args.metrics_staleness_threshold, "--metrics-staleness-threshold"
        ),
    }
    data_layer = getattr(picker_config, "data_layer", None)
    if data_layer is not None:  # llm-d's dataLayer section: its sources and extractors win
        scraper_args.update(data_layer.scraper_kwargs())
    scraper = Scraper(pool, **scraper_args)
    if api_keys is None:
        try:
            api_keys = load_api_keys(args.api_key, args.api_key_file)
        except OSError as exc:
            raise UsageError(f"--api-key-file: cannot read {args.api_key_file}: {exc}") from exc
    if args.max_retries < 0:
        raise UsageError("--max-retries: must be >= 0")
    if duration_s(args.header_timeout, "--header-timeout") <= 0:
        raise UsageError("--header-timeout: must be > 0")
    settings = GatewaySettings(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_retries=args.max_retries,
        connect_timeout_s=duration_s(args.connect_timeout, "--connect-timeout"),
        request_timeout_s=duration_s(args.request_timeout, "--request-timeout"),
        shutdown_timeout_s=duration_s(args.drain_timeout, "--drain-timeout"),
        first_request_timeout_s=duration_s(args.header_timeout, "--header-timeout"),
        api_keys=api_keys,
        service_path=service_path or args.service_path,
        models=models,
        log_requests=not args.no_request_log,
    )
    try:
        objectives = load_objectives(args.objectives)
        outlier = outlier_cli.config_from_args(args)
        retry = outlier_cli.retry_config_from_args(args)
    except OSError as exc:
        raise UsageError(f"--objectives: cannot read {args.objectives}: {exc}") from exc
    handler = getattr(picker_config, "request_handler", None)
    if handler is not None and handler.claiming:  # gRPC parsers: only kvgate epp receives gRPC
        from kvgate.requestcontrol.parsers import check_door, claiming_parsers

        parsers = claiming_parsers(scheduler.plugins, handler.claiming)
        check_door(parsers, "kvgate serve", "it speaks HTTP/1.1 with JSON bodies")
    metrics = RequestMetrics(pool)
    control = build_request_control(
        pool,
        scheduler,
        metrics,
        picker_config,
        objectives=objectives,
        outlier=outlier,
        retry=retry,
        models_of=scraper.models_of,
        log_requests=settings.log_requests,
    )
    return Gateway(
        settings, pool, scheduler, scraper, watcher=watcher, metrics=metrics, control=control
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available (the gateway's measured stack), else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def wait_for_signal(stop: asyncio.Event | None = None) -> str:
    """Block until SIGINT or SIGTERM (or ``stop`` is set); returns the signal's name."""
    loop = asyncio.get_running_loop()
    event = stop or asyncio.Event()
    received: list[str] = []

    def _on(sig: signal.Signals) -> None:
        received.append(sig.name)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on, sig)
    try:
        await event.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return received[0] if received else "stop"


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())


def serve_from_args(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    picker_config = load_scheduler_config(args.config, args.config_text, args.policy)
    scheduler = build_scheduler_from(
        picker_config,
        seed=args.seed,
        tokenizer=args.tokenizer,
        offline=getattr(args, "offline", False),
    )
    gateway = build_gateway(args, scheduler, picker_config=picker_config)

    async def main() -> int:
        try:
            await gateway.start()
        except OSError as exc:
            await gateway.stop()
            print(
                f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
            )
            return 1
        freeze_startup_heap()
        log.info(
            "kvgate gateway listening on %s/v1 with %d endpoint(s)",
            gateway.base_url,
            len(gateway.pool),
        )
        print(
            f"kvgate serve: {gateway.base_url}/v1 (ready when {gateway.base_url}/ready is 200)",
            flush=True,
        )
        print(f"kvgate serve: dashboard at {gateway.dashboard_url}", flush=True)
        try:
            sig = await wait_for_signal()
            log.info(
                "received %s; draining (up to %gs for requests in flight)",
                sig,
                gateway.settings.shutdown_timeout_s,
            )
        finally:
            await gateway.stop()
        return 0

    return run(main)
