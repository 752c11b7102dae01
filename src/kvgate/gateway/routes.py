"""The HTTP front door's routes: OpenAI's inference API, models, health, metrics.

One :class:`Gateway` owns an HTTP server (:mod:`kvgate.http1`), one keep-alive client to the model servers
(:mod:`.upstream`), the endpoint pool and its scraper, and the one request path
(:class:`kvgate.requestcontrol.control.RequestControl`, shared with ``kvgate epp``).
Per inference request::

    auth (401) -> body (413 past the limit) -> RequestControl: parse (400) -> candidates
    (404 / 503) -> admission (flow control: wait, or 429/503) -> schedule (503 / 429)
    -> Forwarder (:mod:`.forward`): for each attempt, best first: start_attempt (PreRequest)
       -> POST upstream -> connect error / 5xx before any byte: end_attempt, next endpoint
       (bounded by max_retries) | otherwise relay (streams chunk by chunk) -> end_attempt
    -> RequestControl.finish: metrics and the request log line, exactly once

Every request ends in a response or an explicit error: errors before the first byte are
OpenAI JSON errors with the right status; after it, a terminal SSE error event. A client
that disconnects cancels the handler (:mod:`kvgate.http1`), which closes the
upstream connection so the model server aborts the request (and removes it from a flow
control queue). ``finish`` runs in a ``finally``, so the counters reconcile (for a whole JSON
answer it is scheduled with ``call_soon`` to run just after the answer is written: the
metrics, log line and dashboard stay off the answer's path, and still run before the loop
reads anything new).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from kvgate.dashboard import DashboardRoutes, DashboardState, dashboard_url
from kvgate.endpoints.file import EndpointsFileWatcher
from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.scrape import Scraper
from kvgate.errors import PayloadTooLargeError, RequestError, SchedulingError
from kvgate.explain.route import PATH as EXPLAIN_PATH
from kvgate.explain.route import ExplainRoute
from kvgate.gateway.auth import ApiKeyChecker
from kvgate.gateway.forward import HEADER_SERVED_BY, JSON, Forwarder, json_error
from kvgate.gateway.settings import GatewaySettings
from kvgate.gateway.upstream import UpstreamClient
from kvgate.http1 import HttpRequest, HttpServer, Response, StreamResponse
from kvgate.openai.errors import request_error_body, scheduling_error_reply
from kvgate.openai.requests import OTHER_ROUTES, UPSTREAM_BODY, parse_body, routing_view
from kvgate.requestcontrol.control import RequestContext, RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.requestcontrol.reqlog import flush_request_log
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import RequestKind

log = logging.getLogger("kvgate.gateway")

#: A route's handler: the request and the ``namespace/name`` of a service path, if any.
Handler = Callable[[HttpRequest, str | None], Awaitable[Response | StreamResponse]]


def _without_service(
    handler: Callable[[HttpRequest], Awaitable[Response | StreamResponse]],
) -> Handler:
    """A dashboard handler in the route table's ``(request, service)`` shape."""

    async def route(req: HttpRequest, _: str | None) -> Response | StreamResponse:
        return await handler(req)

    return route


def scheduling_error_response(exc: SchedulingError, retry_after_s: float) -> Response:
    status, headers, body = scheduling_error_reply(exc, retry_after_s)
    return Response(status, body, dict(headers), content_type=JSON)


class Gateway:
    """The HTTP front: see the module docstring. ``start``/``stop`` on one event loop."""

    def __init__(
        self,
        settings: GatewaySettings,
        pool: EndpointPool,
        scheduler: Scheduler,
        scraper: Scraper,
        *,
        watcher: EndpointsFileWatcher | None = None,
        metrics: RequestMetrics | None = None,
        control: RequestControl | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.scheduler = scheduler
        self.scraper = scraper
        self.watcher = watcher
        self.metrics = metrics or RequestMetrics(pool)
        self.control = control or RequestControl(
            pool,
            scheduler,
            self.metrics,
            models_of=scraper.models_of,
            log_requests=settings.log_requests,
        )
        self.auth = ApiKeyChecker(settings.api_keys)
        # the operator's view: a ring fed by request control's one on_finish hook
        self.dashboard = DashboardState(self.control, "gateway").attach()
        self.dashboard_routes = DashboardRoutes(self.dashboard)
        self.explain = ExplainRoute(self.control, self.dashboard)
        self._client: UpstreamClient | None = None
        self._forwarder: Forwarder | None = None
        self._server: HttpServer | None = None
        self.port: int = settings.port
        self._build_routes()
        self._service_handlers = {self._chat, self._completions, self._models, self._other}
        self._started_plugins = False
        #: True from the start of :meth:`stop`: ``/ready`` answers 503 so balancers move away.
        self.draining = False

    # --- lifecycle --------------------------------------------------------------------------

    def _build_routes(self) -> None:
        """``(method, path) -> handler``; ``/<namespace>/<name>/v1/...`` maps to the same."""
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/ready"): self._ready,
            ("GET", "/metrics"): self._metrics,
            ("POST", EXPLAIN_PATH): self._explain,
            ("GET", EXPLAIN_PATH): self._explain,
        }
        for path in OTHER_ROUTES:  # vLLM's other JSON routes: routed by model and prompt
            self._routes[("POST", path)] = self._other
        for path, page in self.dashboard_routes.table().items():
            self._routes[("GET", path)] = _without_service(page)

    async def _dispatch(self, req: HttpRequest) -> Response | StreamResponse:
        """The HTTP server hands every request here: one dict lookup."""
        path = req.path
        handler = self._routes.get((req.method, path))
        if handler is not None:
            return await handler(req, None)
        # /<namespace>/<name>/v1/...: the seed's service path shape
        parts = path.split("/", 3)
        if len(parts) == 4 and parts[1] and parts[2] and parts[3].startswith("v1/"):
            handler = self._routes.get((req.method, "/" + parts[3]))
            if handler is not None and handler in self._service_handlers:
                return await handler(req, f"{parts[1]}/{parts[2]}")
        return json_error(404, f"no route for {req.method} {path}", code="not_found")

    async def start(self) -> None:
        """Start the client, scraper, watcher and plugins, then listen."""
        self._client = UpstreamClient(connect_timeout_s=self.settings.connect_timeout_s)
        self._forwarder = Forwarder(
            self.settings, self.control, self.scraper, self.auth, self._client
        )
        await self.scheduler.start()
        await self.control.start()
        self._started_plugins = True
        await self.scraper.start()
        if self.watcher is not None:
            await self.watcher.start()
        self._server = HttpServer(
            self._dispatch,
            max_body_bytes=self.settings.max_body_bytes,
            first_request_timeout_s=self.settings.first_request_timeout_s,
        )
        self.port = await self._server.start(self.settings.host, self.settings.port)

    async def stop(self) -> None:
        """Drain, then stop: close the listening socket (new connections are refused), answer
        requests still queued in flow control (503 ``shutting_down``) and report ``/ready``
        503, let requests in flight (streams included) finish for up to
        ``settings.shutdown_timeout_s`` (``--drain-timeout``), cancel what is left (each
        still ends in ``finish``), then stop the scraper, watcher, plugins and client."""
        self.draining = True
        self.dashboard_routes.close()  # an open page must not hold the drain
        if self._server is not None:
            self._server.stop_listening()
        if self._started_plugins:
            # before waiting on handlers: a queued request would otherwise wait out the whole
            # drain and then be cancelled, unanswered
            await self.control.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_timeout_s)
            self._server = None
        if self.watcher is not None:
            await self.watcher.stop()
        await self.scraper.stop()
        if self._started_plugins:
            await self.scheduler.stop()
            self._started_plugins = False
        if self._client is not None:
            await self._client.close()
            self._client = None
        flush_request_log()

    @property
    def base_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.base_url)

    # --- small routes -----------------------------------------------------------------------

    async def _health(self, _: HttpRequest, __: str | None) -> Response | StreamResponse:
        return Response(body=b'{"status":"ok"}', content_type=JSON)

    async def _ready(self, _: HttpRequest, __: str | None) -> Response | StreamResponse:
        ready = len(self.pool.candidates())
        ok = ready > 0 and not self.draining
        body = msgspec.json.encode(
            {"ready": ok, "endpoints_in_rotation": ready, "draining": self.draining}
        )
        return Response(200 if ok else 503, body, content_type=JSON)

    async def _metrics(self, _: HttpRequest, __: str | None) -> Response | StreamResponse:
        return Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def _explain(self, req: HttpRequest, _: str | None) -> Response | StreamResponse:
        if not self.auth.check(req.headers.get("authorization")):
            return json_error(401, "missing or invalid API key (Authorization: Bearer <key>)")
        return await self.explain.handle(req)

    def _check_service_path(self, service: str | None) -> Response | None:
        if service is None or self.settings.service_path is None:
            return None
        if service != self.settings.service_path:
            return json_error(
                404,
                f"no service {service} here; use /{self.settings.service_path}/v1 or /v1",
                code="not_found",
            )
        return None

    async def _models(self, req: HttpRequest, service: str | None) -> Response | StreamResponse:
        if not self.auth.check(req.headers.get("authorization")):
            return json_error(401, "missing or invalid API key (Authorization: Bearer <key>)")
        bad = self._check_service_path(service)
        if bad is not None:
            return bad
        entries = self.scraper.model_entries()
        known = {str(e["id"]) for e in entries}
        for name in sorted(self.settings.models - known):
            if self.pool.candidates():
                entries.append({"id": name, "object": "model", "owned_by": "kvgate"})
        return Response(
            body=msgspec.json.encode({"object": "list", "data": entries}), content_type=JSON
        )

    # --- inference --------------------------------------------------------------------------

    async def _chat(self, req: HttpRequest, service: str | None) -> Response | StreamResponse:
        return await self._inference(req, service, "chat", "/v1/chat/completions")

    async def _completions(
        self, req: HttpRequest, service: str | None
    ) -> Response | StreamResponse:
        return await self._inference(req, service, "completions", "/v1/completions")

    async def _other(self, req: HttpRequest, service: str | None) -> Response | StreamResponse:
        """A vLLM route other than completions and chat, forwarded to the same path."""
        # under /<namespace>/<name>/v1/...: the model server's path is the /v1/... part
        path = req.path if service is None else "/" + req.path.split("/", 3)[3]
        return await self._inference(req, service, None, path)

    async def _inference(
        self,
        req: HttpRequest,
        service: str | None,
        kind: RequestKind | None,
        upstream_path: str,
    ) -> Response | StreamResponse:
        control = self.control
        ctx = control.begin("gateway", req.path)
        control.started(ctx)
        status = 0
        deferred = False
        try:
            resp = await self._serve(req, service, kind, upstream_path, ctx)
            status = ctx.status or resp.status
            if isinstance(resp, Response):
                # written as soon as this returns: count and log it just after, off the
                # answer's path (before any later request on the loop, which comes after I/O)
                asyncio.get_running_loop().call_soon(control.finish, ctx, status)
                deferred = True
            return resp
        except asyncio.CancelledError:
            if ctx.delivered:  # the whole stream reached the client, which then hung up
                status = ctx.status or 200
                raise
            status = 499
            if self.draining:  # cancelled by stop() at the drain deadline, not by the client
                ctx.error = "drain_timeout"
            ctx.error = ctx.error or "client_disconnect"
            raise
        except Exception as exc:  # a bug: still answer, in OpenAI's shape
            log.exception("request failed unexpectedly")
            status = 500
            ctx.error = ctx.error or f"internal: {type(exc).__name__}"
            return json_error(500, f"internal gateway error: {type(exc).__name__}")
        finally:
            if not deferred:
                control.finish(ctx, status)

    def _read_body(self, req: HttpRequest) -> bytes:
        if req.too_large:
            limit = self.settings.max_body_bytes
            length = req.content_length
            raise PayloadTooLargeError(
                f"request body of {length} bytes exceeds the limit of {limit} bytes"
                if length is not None
                else f"request body exceeds the limit of {limit} bytes"
            )
        return req.body

    async def _serve(
        self,
        req: HttpRequest,
        service: str | None,
        kind: RequestKind | None,
        upstream_path: str,
        ctx: RequestContext,
    ) -> Response | StreamResponse:
        if not self.auth.check(req.headers.get("authorization")):
            ctx.error = "unauthorized"
            return json_error(
                401,
                "missing or invalid API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
        bad = self._check_service_path(service)
        if bad is not None:
            ctx.error = "not_found"
            return bad
        try:
            body = self._read_body(req)
            if kind is None and self.control.passthrough:  # passthrough-parser: no body read
                self.control.parse(ctx, "completions", body, req.headers)
            elif kind is None:  # another vLLM route: schedule on the prompt it carries
                parsed = parse_body(body)
                kind, view = routing_view(parsed)
                request = self.control.parse(ctx, kind, body, req.headers, parsed=view)
                if view is not parsed:
                    request.extra[UPSTREAM_BODY] = parsed
            else:
                self.control.parse(ctx, kind, body, req.headers)
            await self.control.route(ctx)
        except RequestError as exc:
            ctx.error = type(exc).__name__
            return Response(exc.status, request_error_body(exc), content_type=JSON)
        except SchedulingError as exc:
            ctx.error = exc.reason
            return scheduling_error_response(exc, self.settings.retry_after_s)
        assert self._forwarder is not None
        return await self._forwarder.forward(req, ctx, body, upstream_path)


__all__ = ["HEADER_SERVED_BY", "Gateway", "GatewaySettings"]
