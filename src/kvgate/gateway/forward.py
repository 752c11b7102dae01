"""Forwarding one scheduled request: attempts in score order, retries, and the relay.

For each attempt, best endpoint first: PreRequest hooks -> POST upstream -> a connect error
or a 5xx before the first byte completes the attempt (ResponseComplete with the failure) and
moves on, at most ``max_retries`` times -> otherwise the answer is relayed (whole for JSON,
chunk by chunk for SSE) and the attempt completes with the usage parsed from it. Errors
before the first byte are OpenAI JSON errors; after it, a terminal SSE error event.
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

from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.scrape import Scraper
from kvgate.gateway.auth import ApiKeyChecker
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.openai import error_body
from kvgate.gateway.proxy import (
    downstream_headers,
    sse_error_event,
    upstream_headers,
    usage_from_json,
    usage_from_sse,
)
from kvgate.gateway.settings import GatewaySettings
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
    ResponseInfo,
    SchedulingResult,
)

log = logging.getLogger("kvgate.gateway")

JSON = "application/json"
#: Response header naming the endpoint that served the request.
HEADER_SERVED_BY = "x-kvgate-endpoint"
_SSE_TAIL_BYTES = 16384


@dataclass(slots=True)
class Outcome:
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


def json_error(
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


class Forwarder:
    """Sends scheduled requests upstream and relays the answers; one per gateway."""

    def __init__(
        self,
        settings: GatewaySettings,
        pool: EndpointPool,
        scheduler: Scheduler,
        scraper: Scraper,
        metrics: GatewayMetrics,
        auth: ApiKeyChecker,
        client: UpstreamClient,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.scheduler = scheduler
        self.scraper = scraper
        self.metrics = metrics
        self.auth = auth
        self.client = client

    def _payload(self, request: Request, body: bytes) -> bytes:
        """The body to send: unchanged unless a plugin rewrote the model."""
        target = request.target_model
        if target and target != request.model and request.body is not None:
            return msgspec.json.encode({**request.body, "model": target})
        return body

    async def forward(
        self,
        req: web.Request,
        request: Request,
        result: SchedulingResult,
        body: bytes,
        upstream_path: str,
        out: Outcome,
        started: float,
    ) -> web.StreamResponse:
        client = self.client
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
                return json_error(
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
            return json_error(
                503,
                f"{last_error} (after {out.attempts} attempt(s))",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        return json_error(502, f"{last_error} (after {out.attempts} attempt(s))")

    async def _relay(
        self,
        req: web.Request,
        request: Request,
        upstream: UpstreamResponse,
        attempt: _Attempt,
        out: Outcome,
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
                return json_error(504, f"endpoint {endpoint.name} did not finish in time")
            except UpstreamStreamError as exc:
                attempt.complete(ResponseInfo(status=upstream.status, error="stream_error"))
                out.error = "stream_error"
                return json_error(502, f"endpoint {endpoint.name} broke off its answer: {exc}")
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
