"""``kvgate epp``: wires config, discovery, scraping, the ext_proc server, health and metrics.

One process, one event loop (uvloop when available): the ext_proc server on ``--grpc-port``
(``--grpc-server h2``, kvgate.extproc.h2server, by default; grpc.aio with ``grpcio``), the
gRPC health service (grpc.aio) on ``--grpc-health-port``, Prometheus on
``--metrics-port``; endpoints from a Kubernetes InferencePool (``--pool-name``) or from
``--endpoint``/``--endpoints-file``; the same scheduler the HTTP gateway builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kvgate.dashboard import DashboardRoutes, DashboardState, dashboard_url
from kvgate.endpoints.outlier import OutlierConfig
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.endpoints.scrape import MetricNames, Scraper
from kvgate.errors import KvgateError
from kvgate.explain.route import PATH as EXPLAIN_PATH
from kvgate.explain.route import ExplainRoute
from kvgate.extproc.director import Director
from kvgate.extproc.h2server import H2ExtProcServer, server_ssl_context
from kvgate.extproc.health import health_handler
from kvgate.extproc.messages import body_mode_value
from kvgate.extproc.stream import ExtProcServicer, RequestStream, add_to_server
from kvgate.heap import freeze_startup_heap
from kvgate.http1 import Handler, HttpRequest, HttpServer, Response, StreamResponse
from kvgate.openai.errors import error_body
from kvgate.plugins.base import PluginContext
from kvgate.requestcontrol.build import build_request_control, load_objectives
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.requestcontrol.reqlog import flush_request_log
from kvgate.scheduling.scheduler import Scheduler

if TYPE_CHECKING:
    from kvgate.config.model import PickerConfig
    from kvgate.k8s.lease import LeaderElector
    from kvgate.k8s.objectives import ObjectiveWatcher

log = logging.getLogger("kvgate.epp")

#: What can serve ext_proc: kvgate.extproc.h2server on the event loop (the default), or
#: grpc.aio (its C core's threads hand every message to the loop: about twice the CPU).
GRPC_SERVERS = ("h2", "grpcio")


@dataclass(slots=True)
class EppOptions:
    """Everything ``kvgate epp`` was told (see kvgate.extproc.cli for the flags)."""

    grpc_host: str = "0.0.0.0"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    secure_serving: bool = False
    cert_path: str | None = None
    config_text: str | None = None
    config_file: str | None = None
    policy: str | None = None
    endpoints: list[EndpointSpec] = field(default_factory=list)
    endpoints_file: str | None = None
    pool_name: str | None = None
    pool_namespace: str = "default"
    pool_group: str = "inference.networking.k8s.io"
    kubeconfig: str | None = None
    refresh_metrics_interval_s: float = 0.05
    metrics_staleness_s: float = 2.0
    metric_names: MetricNames = field(default_factory=MetricNames)
    model_server_metrics_scheme: str | None = None
    model_server_metrics_verify_tls: bool = False
    request_body_mode: str = "FULL_DUPLEX_STREAMED"
    grpc_server: str = "h2"  # one of GRPC_SERVERS
    seed: int = 0
    #: InferenceObjective documents (YAML) for flow-control priorities; with --pool-name
    #: they are also watched from the Kubernetes API server.
    objectives_file: str | None = None
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    log_requests: bool = True
    model_server_metrics_path: str = "/metrics"
    model_server_metrics_port: int | None = None  # None: each endpoint's serving port
    subset_filter: bool = True  # honour x-gateway-destination-endpoint-subset
    #: ``--drain-timeout``: after SIGTERM, how long ext_proc streams in flight may run on.
    drain_timeout_s: float = 30.0
    #: ``--max-concurrent-streams``: ext_proc calls per HTTP/2 connection (both transports).
    max_concurrent_streams: int = 1024
    #: ``--ha-enable-leader-election`` (with --pool-name): only the Lease holder reports
    #: SERVING on gRPC health; the timings are controller-runtime's defaults.
    leader_election: bool = False
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    #: ``--tokenizer`` (a path or a model name) and ``--offline``: the tokenizer plugins use
    #: unless their tokenizersPoolConfig names one, and whether they may download from the Hub.
    tokenizer: str | None = None
    offline: bool = False


def load_config(opts: EppOptions) -> PickerConfig:
    """The EndpointPickerConfig from --config-text / --config-file / --policy (GIE's default)."""
    from kvgate.config import load_picker_config

    if opts.config_text is not None:
        return load_picker_config(text=opts.config_text)
    if opts.config_file is not None:
        return load_picker_config(path=opts.config_file)
    from kvgate.config.policies import policy_config_text

    return load_picker_config(text=policy_config_text(opts.policy or "llm-d-default"))


def plugin_context(opts: EppOptions, rng: random.Random) -> PluginContext:
    """The context plugins are built with: ``rng`` and the ``--tokenizer``/``--offline`` services."""
    from kvgate.kvcache.tokenize import tokenizer_services
    from kvgate.kvcache.tokenizer_files import TokenizerNotFoundError

    try:
        services = tokenizer_services(opts.tokenizer, offline=opts.offline)
    except TokenizerNotFoundError as exc:
        raise KvgateError(f"--tokenizer: {exc}") from exc
    return PluginContext(rng=rng, services=services)


def load_scheduler(opts: EppOptions, rng: random.Random) -> Scheduler:
    """The scheduler the options' EndpointPickerConfig describes."""
    from kvgate.config import build_scheduler

    return build_scheduler(load_config(opts), plugin_context(opts, rng))


class EppServer:
    """The running EPP; :meth:`start` / :meth:`stop` for tests and the CLI alike."""

    def __init__(self, opts: EppOptions, scheduler: Scheduler | None = None) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.pool = EndpointPool()
        pool_label = opts.pool_name or "static"
        self.metrics = RequestMetrics(self.pool, pool_label)
        self.picker_config: PickerConfig | None = None
        if scheduler is None:
            from kvgate.config import build_scheduler

            self.picker_config = load_config(opts)
            scheduler = build_scheduler(self.picker_config, plugin_context(opts, self.rng))
        self.scheduler = scheduler
        scraper_args: dict[str, Any] = {
            "interval_s": opts.refresh_metrics_interval_s,
            "names": opts.metric_names,
            "scheme": opts.model_server_metrics_scheme,
            "verify_tls": opts.model_server_metrics_verify_tls,
            "staleness_s": opts.metrics_staleness_s,
            "metrics_path": opts.model_server_metrics_path,
            "metrics_port": opts.model_server_metrics_port,
        }
        data_layer = getattr(self.picker_config, "data_layer", None)
        if data_layer is not None:  # llm-d's dataLayer section: its sources and extractors win
            scraper_args.update(data_layer.scraper_kwargs())
        handler = getattr(self.picker_config, "request_handler", None)
        if handler is not None and handler.claiming:  # gRPC-only model servers: gRPC health
            from kvgate.requestcontrol.parsers import grpc_health_probe

            scraper_args["health_probe"] = grpc_health_probe(scheduler.plugins, handler)
        self.scraper = Scraper(self.pool, **scraper_args)
        self.objectives = load_objectives(opts.objectives_file)
        self.control = build_request_control(
            self.pool,
            self.scheduler,
            self.metrics,
            self.picker_config,
            objectives=self.objectives,
            outlier=opts.outlier,
            log_requests=opts.log_requests,
            pool_name=pool_label,
        )
        self.director = Director(self.control, self.rng, subset_filter=opts.subset_filter)
        # the operator's view on the metrics port: /dashboard and /debug/explain
        self.dashboard = DashboardState(self.control, "epp").attach()
        self.dashboard_routes = DashboardRoutes(self.dashboard)
        self.explain = ExplainRoute(self.control, self.dashboard)
        self.metrics_port = opts.metrics_port  # the bound port once started
        self._discovery: Any = None
        self._objective_watcher: ObjectiveWatcher | None = None
        self._grpc: grpc.aio.Server | None = None
        self._h2: H2ExtProcServer | None = None
        self._health: grpc.aio.Server | None = None
        self._metrics_server: HttpServer | None = None
        self._metrics_routes: dict[tuple[str, str], Handler] = {}
        self.synced = False
        self._stopped = False
        self.tls_cert: bytes | None = None  # PEM served under --secure-serving
        self.elector: LeaderElector | None = None  # --ha-enable-leader-election
        self.leader_lost = asyncio.Event()  # set when a held Lease could not be renewed
        self._lease_api: Any = None

    async def start(self) -> None:
        """Start every part; if one fails (a port in use, a bad certificate), the parts
        already started are stopped before the error propagates: a gRPC server left running
        keeps grpcio's poller thread alive, and the process then never exits."""
        opts = self.opts
        if opts.grpc_server not in GRPC_SERVERS:
            raise KvgateError(f"grpc_server {opts.grpc_server!r}: expected one of {GRPC_SERVERS}")
        try:
            await self._start_parts()
        except BaseException:
            await self.stop(0)
            raise

    async def _start_parts(self) -> None:
        opts = self.opts
        await self._start_discovery()
        await self._start_election()
        await self.scheduler.start()
        await self.control.start()
        await self.scraper.start()
        options = [("grpc.so_reuseport", 0)]
        address = f"{opts.grpc_host}:{opts.grpc_port}"
        cert_key: tuple[bytes, bytes] | None = None
        if opts.secure_serving:
            from kvgate.extproc.tls import load_or_generate

            cert_key = load_or_generate(opts.cert_path)
            self.tls_cert = cert_key[0]
        body_mode = body_mode_value(opts.request_body_mode)
        if opts.grpc_server == "h2":

            def new_stream() -> RequestStream:
                return RequestStream(self.director, body_mode)

            self._h2 = H2ExtProcServer(
                new_stream, max_concurrent_streams=opts.max_concurrent_streams
            )
            await self._h2.start(
                opts.grpc_host,
                opts.grpc_port,
                server_ssl_context(*cert_key) if cert_key is not None else None,
            )
        else:
            self._grpc = grpc.aio.server(
                options=[*options, ("grpc.max_concurrent_streams", opts.max_concurrent_streams)]
            )
            add_to_server(ExtProcServicer(self.director, body_mode), self._grpc)
            if cert_key is not None:
                cert, key = cert_key
                self._grpc.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
            else:
                self._grpc.add_insecure_port(address)
            await self._grpc.start()
        self._health = grpc.aio.server(options=options)
        health = health_handler(self.serving, leader_election=opts.leader_election)
        self._health.add_generic_rpc_handlers((health,))
        self._health.add_insecure_port(f"{opts.grpc_host}:{opts.grpc_health_port}")
        await self._health.start()
        routes = self._metrics_routes
        routes[("GET", "/metrics")] = self._serve_metrics
        routes[("GET", "/healthz")] = self._serve_health
        for path, page in self.dashboard_routes.table().items():
            routes[("GET", path)] = page
        routes[("POST", EXPLAIN_PATH)] = routes[("GET", EXPLAIN_PATH)] = self.explain.handle
        self._metrics_server = HttpServer(self._serve_metrics_port)
        self.metrics_port = await self._metrics_server.start(opts.grpc_host, opts.metrics_port)
        log.info(
            "kvgate epp serving ext_proc on %s (%s, %s), health on :%d, metrics on :%d, "
            "dashboard at %s",
            address,
            opts.grpc_server,
            "TLS" if opts.secure_serving else "plaintext",
            opts.grpc_health_port,
            self.metrics_port,
            self.dashboard_url,
        )

    @property
    def dashboard_url(self) -> str:
        """The dashboard on the metrics port (loopback when listening on every address)."""
        host = self.opts.grpc_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return dashboard_url(f"http://{host}:{self.metrics_port}")

    async def _start_discovery(self) -> None:
        opts = self.opts
        if opts.pool_name:
            from kvgate.k8s.discovery import PoolWatcher

            watcher = PoolWatcher(
                self.pool,
                name=opts.pool_name,
                namespace=opts.pool_namespace,
                group=opts.pool_group,
                kubeconfig=opts.kubeconfig,
                scheme=opts.model_server_metrics_scheme or "http",
            )
            await watcher.start()
            self._discovery = watcher
            # InferenceObjective priorities of this pool, over --objectives FILE's (the file's
            # are the base: a watched objective of the same name overrides it while it exists)
            from kvgate.k8s.objectives import ObjectiveWatcher

            objectives = ObjectiveWatcher(
                self.objectives,
                pool_name=opts.pool_name,
                namespace=opts.pool_namespace,
                pool_group=opts.pool_group,
                kubeconfig=opts.kubeconfig,
            )
            await objectives.start()
            self._objective_watcher = objectives
            self.synced = True
            return
        if opts.endpoints_file:
            from kvgate.endpoints.file import EndpointsFileWatcher

            file_watcher = EndpointsFileWatcher(self.pool, opts.endpoints_file, opts.endpoints)
            file_watcher.load_now()
            await file_watcher.start()
            self._discovery = file_watcher
        else:
            self.pool.set_endpoints(opts.endpoints)
        self.synced = True

    def serving(self) -> bool:
        """What gRPC health reports: synced and, under leader election, holding the Lease
        (GIE's passive replica is NOT_SERVING so Envoy sends it nothing; it still keeps its
        pool in sync and routes what reaches it, as llm-d's haPopulateNonLeaderDatastore)."""
        return self.synced and (self.elector is None or self.elector.is_leader)

    async def _start_election(self) -> None:
        opts = self.opts
        if not opts.leader_election:
            return
        if not opts.pool_name:
            raise KvgateError("leader election: needs --pool-name (the Lease is the pool's)")
        from kvgate.k8s.apiclient import connect
        from kvgate.k8s.lease import LeaderElector, lease_name

        self._lease_api = await connect(opts.kubeconfig)
        self.elector = LeaderElector(
            self._lease_api,
            namespace=opts.pool_namespace,
            name=lease_name(opts.pool_namespace, opts.pool_name),
            lease_duration_s=opts.lease_duration_s,
            renew_deadline_s=opts.renew_deadline_s,
            retry_period_s=opts.retry_period_s,
            on_lost=self.leader_lost.set,
        )
        await self.elector.start()

    async def _serve_metrics_port(self, request: HttpRequest) -> Response | StreamResponse:
        handler = self._metrics_routes.get((request.method, request.path))
        if handler is None:
            body = error_body(f"no route for {request.method} {request.path}", status=404)
            return Response(404, body, content_type="application/json")
        return await handler(request)

    async def _serve_metrics(self, request: HttpRequest) -> Response:
        body = generate_latest(self.metrics.registry)
        return Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, request: HttpRequest) -> Response:
        ready = self.synced and bool(self.pool.candidates())
        body = b"ok" if ready else b"not ready"
        return Response(200 if ready else 503, body, content_type="text/plain; charset=utf-8")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Drain: requests queued in flow control are answered (503 ``shutting_down``) at once,
        new streams are refused, calls in flight get ``grace_s`` to end (both servers) and are
        then reset; a second stop is a no-op."""
        if self._stopped:
            return
        self._stopped = True
        self.synced = False  # the health service reports NOT_SERVING while draining
        if self.elector is not None:  # release the Lease first: a standby takes over now
            await self.elector.stop()
            await self._lease_api.close()
        await self.control.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._h2 is not None:
            await self._h2.stop(grace_s)
        if self._health is not None:
            await self._health.stop(0)
        if self._metrics_server is not None:
            self.dashboard_routes.close()  # an open page must not hold the metrics server
            await self._metrics_server.stop(grace_s)
        if self._discovery is not None:
            await self._discovery.stop()
        if self._objective_watcher is not None:
            await self._objective_watcher.stop()
        await self.scraper.stop()
        await self.scheduler.stop()
        flush_request_log()


async def serve(opts: EppOptions) -> int:
    """Run until SIGTERM/SIGINT."""
    server = EppServer(opts)
    await server.start()
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    lost = asyncio.ensure_future(server.leader_lost.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((lost, stopping), return_when=asyncio.FIRST_COMPLETED)
    lost.cancel()
    stopping.cancel()
    if server.leader_lost.is_set():  # as controller-runtime: a lost lease ends the process
        log.error("leader election lost: exiting")
        await server.stop(opts.drain_timeout_s)
        return 1
    log.info("draining (up to %gs for ext_proc streams in flight)", opts.drain_timeout_s)
    await server.stop(opts.drain_timeout_s)
    return 0


def run(opts: EppOptions) -> int:
    """Serve on uvloop; ``KVGATE_NO_UVLOOP=1`` uses asyncio's own loop (for comparisons:
    grpc.aio measured the same on both, docs/PERFORMANCE.md)."""
    if os.environ.get("KVGATE_NO_UVLOOP"):
        return asyncio.run(serve(opts))
    try:
        import uvloop

        return uvloop.run(serve(opts))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(opts))
