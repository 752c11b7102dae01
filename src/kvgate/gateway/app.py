"""The OpenAI-compatible HTTP gateway: parse, schedule, forward, relay, account.

One :class:`Gateway` owns an aiohttp server, one aiohttp client session to the model
servers, the endpoint pool and its scraper, and the scheduler. Per inference request::

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
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

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
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.openai import (
    build_request,
    error_body,
    parse_body,
    request_error_body,
    strip_routing_headers,
)
from kvgate.gateway.proxy import (
    downstream_headers,
    sse_error_event,
    upstream_headers,
    usage_from_json,
    usage_from_sse,
)
from kvgate.gateway.reqlog import log_request, scores_of
from kvgate.gateway.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamStreamError,
)
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import (
    HEADER_REQUEST_ID,
    Endpoint,
    ProfileRunResult,
    Request,
    RequestKind,
    ResponseInfo,
    SchedulingResult,
)

log = logging.getLogger("kvgate.gateway")

JSON = "application/json"
#: Response header naming the endpoint that served the request.
HEADER_SERVED_BY = "x-kvgate-endpoint"
_SSE_TAIL_BYTES = 16384


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway serves; the CLI fills it from flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 16 * 1024 * 1024
    max_retries: int = 2  # extra attempts after the first, on other endpoints
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 600.0  # whole upstream exchange, per attempt
    retry_after_s: int = 1
    api_keys: frozenset[str] = frozenset()
    #: ``namespace/name`` for the seed's path shape; None serves any ``/<ns>/<name>/v1/...``.
    service_path: str | None = None
    #: Model names known from configuration, used for 404s before any replica listed models.
    models: frozenset[str] = frozenset()
    shutdown_timeout_s: float = 10.0
    log_requests: bool = True


@dataclass(slots=True)
class _Outcome:
    """What the per-request log line and counters report."""

    model: str = ""
    endpoint: str = ""
    status: int = 0
    error: str | None = None
    attempts: int = 0
    ttft_s: float | None = None
    stream: bool = False
    request_id: str = ""
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    result: SchedulingResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Attempt:
    """Guards the exactly-once ``response_complete`` of one forwarded attempt."""

    __slots__ = ("done", "endpoint", "request", "scheduler")

    def __init__(self, scheduler: Scheduler, request: Request, endpoint: Endpoint) -> None:
        self.scheduler = scheduler
        self.request = request
        self.endpoint = endpoint
        self.done = False

    def complete(self, info: ResponseInfo) -> None:
        if not self.done:
            self.done = True
            self.scheduler.response_complete(self.request, info, self.endpoint)


def _json_error(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | int | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(message, status=status, param=param, code=code),
        content_type=JSON,
        headers=headers,
    )


def _retarget(result: SchedulingResult, endpoint: Endpoint) -> SchedulingResult:
    """The same cycle's result with ``endpoint`` as the primary target (for a retry)."""
    primary = result.primary
    results = dict(result.profile_results)
    results[result.primary_profile_name] = ProfileRunResult((endpoint,), primary.scored)
    return SchedulingResult(results, result.primary_profile_name)


def attempt_order(result: SchedulingResult) -> list[Endpoint]:
    """The pick, then the picker's other targets, then the other survivors by score."""
    primary = result.primary
    order: list[Endpoint] = list(primary.targets)
    seen = {id(e) for e in order}
    for scored in sorted(primary.scored, key=lambda s: -s.score):
        if id(scored.endpoint) not in seen:
            seen.add(id(scored.endpoint))
            order.append(scored.endpoint)
    return order


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
        return _json_error(404, f"no route for {req.method} {req.path}", code="not_found")

    def _check_service_path(self, req: web.Request) -> web.Response | None:
        ns = req.match_info.get("namespace")
        if ns is None or self.settings.service_path is None:
            return None
        if f"{ns}/{req.match_info.get('name')}" != self.settings.service_path:
            return _json_error(
                404,
                f"no service {ns}/{req.match_info.get('name')} here; "
                f"use /{self.settings.service_path}/v1 or /v1",
                code="not_found",
            )
        return None

    async def _models(self, req: web.Request) -> web.Response:
        if not self.auth.check(req.headers.get("Authorization")):
            return _json_error(401, "missing or invalid API key (Authorization: Bearer <key>)")
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
        out = _Outcome()
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
            return _json_error(500, f"internal gateway error: {type(exc).__name__}")
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
        out: _Outcome,
        started: float,
    ) -> web.StreamResponse:
        if not self.auth.check(req.headers.get("Authorization")):
            out.error = "unauthorized"
            return _json_error(
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
            return _json_error(
                503,
                "no model server is healthy right now; retry shortly",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        t0 = time.perf_counter()
        try:
            result = self.scheduler.schedule(request, candidates)
        except NoCandidatesError as exc:
            out.error = "no_candidates"
            return _json_error(
                503, str(exc), headers={"Retry-After": str(self.settings.retry_after_s)}
            )
        except SchedulingFailedError as exc:
            out.error = "scheduling_failed"
            return _json_error(429, f"scheduling failed: {exc}", code="scheduling_failed")
        finally:
            self.metrics.scheduling.observe(time.perf_counter() - t0)
        out.result = result
        self.metrics.picked(result.target.name)
        return await self._forward(req, request, result, body, upstream_path, out, started)

    def _payload(self, request: Request, body: bytes) -> bytes:
        """The body to send: unchanged unless a plugin rewrote the model."""
        target = request.target_model
        if target and target != request.model and request.body is not None:
            return msgspec.json.encode({**request.body, "model": target})
        return body

    async def _forward(
        self,
        req: web.Request,
        request: Request,
        result: SchedulingResult,
        body: bytes,
        upstream_path: str,
        out: _Outcome,
        started: float,
    ) -> web.StreamResponse:
        assert self._client is not None
        client = self._client
        order = attempt_order(result)[: self.settings.max_retries + 1]
        payload = self._payload(request, body)
        query = req.query_string
        path = upstream_path + ("?" + query if query else "")
        last_error = "no endpoint could be reached"
        all_connect = True
        loop = asyncio.get_running_loop()
        for i, endpoint in enumerate(order):
            if i > 0:
                if not self.pool.is_healthy(endpoint.name) and self.pool.get(endpoint.name):
                    continue
                self.metrics.retries.labels("connect" if all_connect else "upstream_5xx").inc()
            attempt_result = result if i == 0 else _retarget(result, endpoint)
            extra = self.scheduler.pre_request(request, attempt_result)
            extra[HEADER_REQUEST_ID] = request.request_id
            hdrs = upstream_headers(
                req.headers.items(), extra, drop_authorization=self.auth.enabled
            )
            attempt = _Attempt(self.scheduler, request, endpoint)
            out.endpoint = endpoint.name
            out.attempts += 1
            is_last = i == len(order) - 1
            deadline = loop.time() + self.settings.request_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    upstream = await client.post(
                        endpoint.address,
                        endpoint.port,
                        path,
                        hdrs.items(),
                        payload,
                        tls=endpoint.scheme == "https",
                        host_header=endpoint.hostport,
                    )
            except asyncio.CancelledError:
                attempt.complete(ResponseInfo(error="client_disconnect"))
                raise
            except (UpstreamConnectError, UpstreamStreamError) as exc:
                attempt.complete(ResponseInfo(error="connect"))
                self.metrics.upstream_errors.labels(endpoint.name, "connect").inc()
                if "cannot connect" in str(exc):
                    self.scraper.mark_failed(endpoint.name)
                last_error = f"endpoint {endpoint.name} failed: {exc}"
                log.warning("request %s: %s", request.request_id, last_error)
                continue
            except TimeoutError:
                attempt.complete(ResponseInfo(error="timeout"))
                self.metrics.upstream_errors.labels(endpoint.name, "timeout").inc()
                out.error = "timeout"
                return _json_error(
                    504, f"endpoint {endpoint.name} did not answer in time", code="timeout"
                )
            try:
                if upstream.status >= 500 and not is_last:
                    with contextlib.suppress(UpstreamStreamError, TimeoutError):
                        async with asyncio.timeout_at(deadline):
                            await upstream.read()
                    attempt.complete(ResponseInfo(status=upstream.status, error="upstream_5xx"))
                    self.metrics.upstream_errors.labels(endpoint.name, "upstream_5xx").inc()
                    last_error = f"endpoint {endpoint.name} answered {upstream.status}"
                    all_connect = False
                    continue
                return await self._relay(req, request, upstream, attempt, out, started, deadline)
            except asyncio.CancelledError:
                attempt.complete(ResponseInfo(status=upstream.status, error="client_disconnect"))
                raise
            finally:
                upstream.release()
        out.error = "upstream_unreachable" if all_connect else "upstream_5xx"
        if all_connect:
            return _json_error(
                503,
                f"{last_error} (after {out.attempts} attempt(s))",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        return _json_error(502, f"{last_error} (after {out.attempts} attempt(s))")

    async def _relay(
        self,
        req: web.Request,
        request: Request,
        upstream: UpstreamResponse,
        attempt: _Attempt,
        out: _Outcome,
        started: float,
        deadline: float,
    ) -> web.StreamResponse:
        endpoint = attempt.endpoint
        info = ResponseInfo(status=upstream.status)
        headers = downstream_headers(upstream.headers)
        headers[HEADER_REQUEST_ID] = request.request_id
        headers[HEADER_SERVED_BY] = endpoint.name
        if not upstream.content_type.startswith("text/event-stream"):
            out.stream = False
            try:
                async with asyncio.timeout_at(deadline):
                    data = await upstream.read()
            except TimeoutError:
                attempt.complete(ResponseInfo(status=upstream.status, error="timeout"))
                out.error = "timeout"
                return _json_error(504, f"endpoint {endpoint.name} did not finish in time")
            except UpstreamStreamError as exc:
                attempt.complete(ResponseInfo(status=upstream.status, error="stream_error"))
                out.error = "stream_error"
                return _json_error(502, f"endpoint {endpoint.name} broke off its answer: {exc}")
            if upstream.status < 300:
                usage = usage_from_json(data)
                if usage is not None:
                    info.prompt_tokens = usage.prompt_tokens
                    info.completion_tokens = usage.completion_tokens
                    info.cached_tokens = usage.cached_tokens
            elif upstream.status >= 500:
                info.error = "upstream_5xx"
                if not data.lstrip().startswith(b"{"):
                    data = error_body(
                        f"endpoint {endpoint.name} answered {upstream.status}",
                        status=upstream.status,
                    )
                    headers["Content-Type"] = JSON
            attempt.complete(info)
            headers.update(info.headers)
            out.prompt_tokens, out.cached_tokens = info.prompt_tokens, info.cached_tokens
            out.error = info.error
            return web.Response(status=upstream.status, body=data, headers=headers)
        # Streaming: pass each chunk on as it arrives; no buffering.
        resp = web.StreamResponse(status=upstream.status, headers=headers)
        await resp.prepare(req)
        out.ttft_s = time.perf_counter() - started  # headers are out; refined below
        first = True
        tail = b""
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in upstream.iter_chunks():
                    if first:
                        out.ttft_s = time.perf_counter() - started
                        first = False
                    try:
                        await resp.write(chunk)
                    except ConnectionResetError:
                        info.error = "client_disconnect"
                        break
                    tail = tail + chunk if len(tail) < _SSE_TAIL_BYTES else tail[-4096:] + chunk
        except (UpstreamStreamError, TimeoutError) as exc:
            info.error = "timeout" if isinstance(exc, TimeoutError) else "stream_error"
            message = f"endpoint {endpoint.name} " + (
                "timed out" if info.error == "timeout" else f"broke off the stream: {exc}"
            )
            log.warning("request %s: %s", request.request_id, message)
            with contextlib.suppress(ConnectionResetError):
                await resp.write(sse_error_event(message, status=502))
        usage = usage_from_sse(tail)
        if usage is not None:
            info.prompt_tokens = usage.prompt_tokens
            info.completion_tokens = usage.completion_tokens
            info.cached_tokens = usage.cached_tokens
        out.prompt_tokens, out.cached_tokens = info.prompt_tokens, info.cached_tokens
        out.error = info.error
        attempt.complete(info)
        if info.error == "client_disconnect":
            out.status = 499
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


__all__ = ["HEADER_SERVED_BY", "Gateway", "GatewaySettings", "attempt_order"]
