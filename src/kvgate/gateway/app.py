"""The OpenAI-compatible HTTP gateway: parse, schedule, forward, relay, account.

One :class:`Gateway` owns an aiohttp server, one keep-alive client to the model servers
(:mod:`.upstream`), the endpoint pool and its scraper, and the scheduler; forwarding and
relaying live in :mod:`.forward`. Per inference request::

    auth -> body (413 past the limit) -> parse (400) -> model check (404) -> candidates (503)
    -> Scheduler.schedule (429 on failure) -> for each attempt, best first:
         pre_request -> POST upstream -> connect error / 5xx before any byte: response_complete,
         next endpoint (bounded by max_retries) | otherwise relay (streams chunk by chunk)
         -> response_complete exactly once for the attempt, with usage parsed from the body

Every request ends in a response or an explicit error: errors before the first byte are
OpenAI JSON errors with the right status; after it, a terminal SSE error event. A client
that disconnects cancels the handler (aiohttp ``handler_cancellation``), which closes the
upstream connection so the model server aborts the request. ``kvgate_requests_total`` is
incremented exactly once per request in a ``finally``, so the counters reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from aiohttp import web

from kvgate.endpoints.file import EndpointsFileWatcher
from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.scrape import Scraper
from kvgate.errors import (
    ModelNotFoundError,
    NoCandidatesError,
    PayloadTooLargeError,
    RequestError,
    SchedulingFailedError,
)
from kvgate.gateway.auth import ApiKeyChecker
from kvgate.gateway.forward import (
    HEADER_SERVED_BY,
    JSON,
    Forwarder,
    Outcome,
    attempt_order,
    json_error,
)
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.openai import (
    build_request,
    parse_body,
    request_error_body,
    strip_routing_headers,
)
from kvgate.gateway.reqlog import log_request, scores_of
from kvgate.gateway.settings import GatewaySettings
from kvgate.gateway.upstream import UpstreamClient
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import Endpoint, RequestKind

log = logging.getLogger("kvgate.gateway")


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
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.scheduler = scheduler
        self.scraper = scraper
        self.watcher = watcher
        self.metrics = metrics or GatewayMetrics(pool)
        scheduler.observe = self.metrics.observe_plugin
        self.auth = ApiKeyChecker(settings.api_keys)
        self._client: UpstreamClient | None = None
        self._forwarder: Forwarder | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = settings.port
        self.app = self._build_app()
        self._started_plugins = False
        pool.on_removed(scheduler.endpoints_removed)

    # --- lifecycle --------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        r = app.router
        for prefix in ("/v1", "/{namespace}/{name}/v1"):
            r.add_post(prefix + "/chat/completions", self._chat)
            r.add_post(prefix + "/completions", self._completions)
            r.add_get(prefix + "/models", self._models)
        r.add_get("/health", self._health)
        r.add_get("/ready", self._ready)
        r.add_get("/metrics", self._metrics)
        r.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self) -> None:
        """Start the client, scraper, watcher and plugins, then listen."""
        self._client = UpstreamClient(connect_timeout_s=self.settings.connect_timeout_s)
        self._forwarder = Forwarder(
            self.settings,
            self.pool,
            self.scheduler,
            self.scraper,
            self.metrics,
            self.auth,
            self._client,
        )
        await self.scheduler.start()
        self._started_plugins = True
        await self.scraper.start()
        if self.watcher is not None:
            await self.watcher.start()
        self._runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_timeout_s,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, reuse_address=True, backlog=1024
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (bounded), then stop the rest."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.watcher is not None:
            await self.watcher.stop()
        await self.scraper.stop()
        if self._started_plugins:
            await self.scheduler.stop()
            self._started_plugins = False
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def base_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    # --- small routes -----------------------------------------------------------------------

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    async def _ready(self, _: web.Request) -> web.Response:
        ready = len(self.pool.candidates())
        body = msgspec.json.encode({"ready": ready > 0, "endpoints_in_rotation": ready})
        return web.Response(status=200 if ready else 503, body=body, content_type=JSON)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def _not_found(self, req: web.Request) -> web.Response:
        return json_error(404, f"no route for {req.method} {req.path}", code="not_found")

    def _check_service_path(self, req: web.Request) -> web.Response | None:
        ns = req.match_info.get("namespace")
        if ns is None or self.settings.service_path is None:
            return None
        if f"{ns}/{req.match_info.get('name')}" != self.settings.service_path:
            return json_error(
                404,
                f"no service {ns}/{req.match_info.get('name')} here; "
                f"use /{self.settings.service_path}/v1 or /v1",
                code="not_found",
            )
        return None

    async def _models(self, req: web.Request) -> web.Response:
        if not self.auth.check(req.headers.get("Authorization")):
            return json_error(401, "missing or invalid API key (Authorization: Bearer <key>)")
        bad = self._check_service_path(req)
        if bad is not None:
            return bad
        entries = self.scraper.model_entries()
        known = {str(e["id"]) for e in entries}
        for name in sorted(self.settings.models - known):
            if self.pool.candidates():
                entries.append({"id": name, "object": "model", "owned_by": "kvgate"})
        return web.Response(
            body=msgspec.json.encode({"object": "list", "data": entries}), content_type=JSON
        )

    # --- inference --------------------------------------------------------------------------

    async def _chat(self, req: web.Request) -> web.StreamResponse:
        return await self._inference(req, "chat", "/v1/chat/completions")

    async def _completions(self, req: web.Request) -> web.StreamResponse:
        return await self._inference(req, "completions", "/v1/completions")

    async def _inference(
        self, req: web.Request, kind: RequestKind, upstream_path: str
    ) -> web.StreamResponse:
        started = time.perf_counter()
        out = Outcome()
        m = self.metrics
        m.in_flight.inc()
        try:
            resp = await self._serve(req, kind, upstream_path, out, started)
            if out.status == 0:
                out.status = resp.status
            return resp
        except asyncio.CancelledError:
            out.status = 499
            out.error = out.error or "client_disconnect"
            raise
        except Exception as exc:  # a bug: still answer, in OpenAI's shape
            log.exception("request failed unexpectedly")
            out.status = 500
            out.error = out.error or f"internal: {type(exc).__name__}"
            return json_error(500, f"internal gateway error: {type(exc).__name__}")
        finally:
            elapsed = time.perf_counter() - started
            m.in_flight.dec()
            model = out.model or "unknown"
            m.finished(model, out.endpoint, out.status, elapsed, out.ttft_s if out.stream else None)
            if out.prompt_tokens or out.cached_tokens:
                m.tokens(model, out.prompt_tokens or 0, out.cached_tokens or 0)
            if self.settings.log_requests:
                log_request(
                    {
                        "request_id": out.request_id,
                        "model": out.model,
                        "path": req.path,
                        "status": out.status,
                        "endpoint": out.endpoint or None,
                        "attempts": out.attempts,
                        "stream": out.stream,
                        "ttft_ms": None if out.ttft_s is None else round(out.ttft_s * 1e3, 3),
                        "duration_ms": round(elapsed * 1e3, 3),
                        "error": out.error,
                        "prompt_tokens": out.prompt_tokens,
                        "cached_tokens": out.cached_tokens,
                        "scores": scores_of(out.result),
                    }
                )

    async def _read_body(self, req: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLargeError(
                f"request body of {req.content_length} bytes exceeds the limit of {limit} bytes"
            )
        try:
            return await req.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes") from exc

    def _candidates_for(self, model: str) -> list[Endpoint]:
        """Endpoints in rotation that serve ``model`` (or have not listed models yet)."""
        healthy = self.pool.candidates()
        if not healthy:
            return []
        out: list[Endpoint] = []
        served: set[str] = set()
        for endpoint in healthy:
            models = self.scraper.models_of(endpoint.name)
            if models is None or model in models:
                out.append(endpoint)
            else:
                served |= models
        if not out:
            listing = ", ".join(sorted(served)) or "none"
            raise ModelNotFoundError(
                f"the model '{model}' does not exist here (served: {listing})",
                param="model",
                code="model_not_found",
            )
        return out

    async def _serve(
        self,
        req: web.Request,
        kind: RequestKind,
        upstream_path: str,
        out: Outcome,
        started: float,
    ) -> web.StreamResponse:
        if not self.auth.check(req.headers.get("Authorization")):
            out.error = "unauthorized"
            return json_error(
                401,
                "missing or invalid API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
        bad = self._check_service_path(req)
        if bad is not None:
            return bad
        try:
            body = await self._read_body(req)
            parsed = parse_body(body)
            headers = strip_routing_headers(req.headers)
            request = build_request(kind, parsed, headers, body_size=len(body))
            out.model = request.model
            out.request_id = request.request_id
            out.stream = parsed.get("stream") is True
            candidates = self._candidates_for(request.model)
        except RequestError as exc:
            out.error = type(exc).__name__
            return web.Response(status=exc.status, body=request_error_body(exc), content_type=JSON)
        if not candidates:
            out.error = "no_healthy_endpoint"
            return json_error(
                503,
                "no model server is healthy right now; retry shortly",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        t0 = time.perf_counter()
        try:
            result = self.scheduler.schedule(request, candidates)
        except NoCandidatesError as exc:
            out.error = "no_candidates"
            return json_error(
                503, str(exc), headers={"Retry-After": str(self.settings.retry_after_s)}
            )
        except SchedulingFailedError as exc:
            out.error = "scheduling_failed"
            return json_error(429, f"scheduling failed: {exc}", code="scheduling_failed")
        finally:
            self.metrics.scheduling.observe(time.perf_counter() - t0)
        out.result = result
        self.metrics.picked(result.target.name)
        assert self._forwarder is not None
        return await self._forwarder.forward(
            req, request, result, body, upstream_path, out, started
        )


__all__ = ["HEADER_SERVED_BY", "Gateway", "GatewaySettings", "attempt_order"]
