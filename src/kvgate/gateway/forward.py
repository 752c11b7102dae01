"""Forwarding one scheduled request: attempts in score order, retries, and the relay.

For each attempt, best endpoint first: ``RequestControl.start_attempt`` (PreRequest hooks) ->
POST upstream -> a connect error or a 5xx before the first byte ends the attempt
(``end_attempt``: ResponseComplete with the failure, counted by outlier detection) and moves
on, at most ``max_retries`` times, each retry within the retry budget and after a jittered
back-off (Envoy's semantics, :mod:`kvgate.endpoints.retry`) -> otherwise the answer is relayed
(whole for JSON, chunk by chunk for SSE) and the attempt ends with the usage parsed from it.
Errors before the first byte are OpenAI JSON errors; after it, a terminal SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from functools import partial

import msgspec

from kvgate.endpoints.retry import backoff_s
from kvgate.endpoints.scrape import Scraper
from kvgate.flowcontrol.controller import evicted
from kvgate.gateway.auth import ApiKeyChecker
from kvgate.gateway.proxy import downstream_headers, upstream_headers
from kvgate.gateway.settings import GatewaySettings
from kvgate.gateway.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamStreamError,
)
from kvgate.http1 import HttpRequest, Response, StreamResponse
from kvgate.openai.errors import error_body, scheduling_error_reply, sse_error_event
from kvgate.openai.requests import UPSTREAM_BODY
from kvgate.openai.usage import Usage, usage_from_json, usage_from_sse
from kvgate.requestcontrol.control import RequestContext, RequestControl, attempt_order
from kvgate.scheduling.types import (
    HEADER_ENCODERS,
    HEADER_PREFILLER,
    HEADER_REQUEST_ID,
    Endpoint,
    Request,
    ResponseInfo,
)
from kvgate.sidecar.encode import EncodeLeg, with_ec_params
from kvgate.sidecar.legs import PrefillLeg, decode_body

log = logging.getLogger("kvgate.gateway")

JSON = "application/json"
#: Response header naming the endpoint that served the request.
HEADER_SERVED_BY = "x-kvgate-endpoint"
_SSE_TAIL_BYTES = 16384


def json_error(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | int | None = None,
) -> Response:
    return Response(
        status,
        error_body(message, status=status, param=param, code=code),
        headers,
        content_type=JSON,
    )


class Forwarder:
    """Sends scheduled requests upstream and relays the answers; one per gateway."""

    def __init__(
        self,
        settings: GatewaySettings,
        control: RequestControl,
        scraper: Scraper,
        auth: ApiKeyChecker,
        client: UpstreamClient,
    ) -> None:
        self.settings = settings
        self.control = control
        self.pool = control.pool
        self.metrics = control.metrics
        self.scraper = scraper
        self.auth = auth
        self.client = client
        self._rng = random.Random()  # back-off jitter
        #: P/D: the prefill leg when the schedule names a prefill endpoint (kvgate.sidecar.legs)
        self.prefill_leg = PrefillLeg(
            client, self.metrics.registry, timeout_s=settings.request_timeout_s
        )
        #: E/P/D: the encode leg when the schedule names encoders (kvgate.sidecar.encode)
        self.encode_leg = EncodeLeg(
            client, self.metrics.registry, timeout_s=settings.request_timeout_s
        )

    def _payload(self, request: Request, body: bytes) -> bytes:
        """The body to send: unchanged unless a plugin rewrote the model (then the client's
        body with the new model, not the view the scheduler read)."""
        target = request.target_model
        if target and target != request.model and request.body is not None:
            original = request.extra.get(UPSTREAM_BODY, request.body)
            return msgspec.json.encode({**original, "model": target})
        return body

    async def forward(
        self, req: HttpRequest, ctx: RequestContext, body: bytes, upstream_path: str
    ) -> Response | StreamResponse:
        assert ctx.request is not None and ctx.result is not None
        result = ctx.result
        limit = self.settings.max_retries + 1
        primary = result.primary
        # the full order (a sort of the survivors) is only needed once the first attempt
        # failed; with more than one survivor and retries allowed there is a next one
        lazy = limit > 1 and len(primary.scored) > 1 and bool(primary.targets)
        order = [primary.targets[0]] if lazy else attempt_order(result)[:limit]
        payload = self._payload(ctx.request, body)
        query = req.query_string
        path = upstream_path + ("?" + query if query else "")
        last_error = "no endpoint could be reached"
        all_connect = True
        budget = self.control.retry_budget
        i = -1
        while i + 1 < len(order):
            i += 1
            endpoint = order[i]
            retry = i > 0
            if retry:
                if not self.pool.is_healthy(endpoint.name) and self.pool.get(endpoint.name):
                    continue
                if budget is not None and not budget.try_acquire():
                    # retries must not multiply an overload: answer with what failed
                    last_error += "; not retried: the retry budget is spent"
                    break
                self.metrics.child(
                    self.metrics.retries, "connect" if all_connect else "upstream_5xx"
                ).inc()
            try:
                if retry and budget is not None:
                    cfg = budget.config
                    await asyncio.sleep(
                        backoff_s(i, cfg.backoff_base_s, cfg.backoff_max_s, self._rng)
                    )
                outcome = await self._attempt(
                    req, ctx, endpoint, path, payload, is_last=not lazy and i == len(order) - 1
                )
            finally:
                if retry and budget is not None:
                    budget.release()
            if isinstance(outcome, Response | StreamResponse):
                return outcome
            last_error, connect = outcome
            all_connect = all_connect and connect
            if lazy:
                order, lazy = attempt_order(result)[:limit], False
        ctx.error = "upstream_unreachable" if all_connect else "upstream_5xx"
        if all_connect:
            return json_error(
                503,
                f"{last_error} (after {ctx.attempts} attempt(s))",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        return json_error(502, f"{last_error} (after {ctx.attempts} attempt(s))")

    async def _attempt(
        self,
        req: HttpRequest,
        ctx: RequestContext,
        endpoint: Endpoint,
        path: str,
        payload: bytes,
        *,
        is_last: bool,
    ) -> Response | StreamResponse | tuple[str, bool]:
        """One attempt at ``endpoint``: the answer for the client, or ``(what failed,
        whether it was a connect failure)`` when the next endpoint should be tried."""
        assert ctx.request is not None
        control = self.control
        request = ctx.request
        extra = control.start_attempt(ctx, endpoint)
        extra[HEADER_REQUEST_ID] = request.request_id
        hdrs = upstream_headers(req.headers.items(), extra, drop_authorization=self.auth.enabled)
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        prefiller = hdrs.pop(HEADER_PREFILLER, None)  # this gateway runs every leg itself
        encoders = hdrs.pop(HEADER_ENCODERS, None)
        try:
            if encoders and request.mm_items:
                async with asyncio.timeout_at(deadline):
                    payload = await self._encode(request, encoders, hdrs, payload)
            if prefiller:
                async with asyncio.timeout_at(deadline):
                    payload = await self._prefill(request, prefiller, path, hdrs, payload)
            upstream = await self.client.post(
                endpoint.address,
                endpoint.port,
                path,
                hdrs.items(),
                payload,
                tls=endpoint.scheme == "https",
                host_header=endpoint.hostport,
                deadline=deadline,
                sent=self._evictable(ctx),
            )
        except asyncio.CancelledError:
            control.end_attempt(ctx, ResponseInfo(error="client_disconnect"))
            raise
        except (UpstreamConnectError, UpstreamStreamError) as exc:
            if ctx.evicted:  # evicted before the answer's head: not a failure to retry
                return self._evicted(ctx, 0)
            control.end_attempt(ctx, ResponseInfo(error="connect"))
            self.metrics.child(self.metrics.upstream_errors, endpoint.name, "connect").inc()
            if "cannot connect" in str(exc):
                self.scraper.mark_failed(endpoint.name)
            failed = f"endpoint {endpoint.name} failed: {exc}"
            log.warning("request %s: %s", request.request_id, failed)
            return failed, True
        except TimeoutError:
            control.end_attempt(ctx, ResponseInfo(error="timeout"))
            self.metrics.child(self.metrics.upstream_errors, endpoint.name, "timeout").inc()
            ctx.error = "timeout"
            return json_error(
                504, f"endpoint {endpoint.name} did not answer in time", code="timeout"
            )
        try:
            if upstream.status >= 500 and not is_last:
                with contextlib.suppress(UpstreamStreamError, TimeoutError):
                    await upstream.read()  # bounded by the deadline given to post
                control.end_attempt(ctx, ResponseInfo(status=upstream.status, error="upstream_5xx"))
                self.metrics.child(
                    self.metrics.upstream_errors, endpoint.name, "upstream_5xx"
                ).inc()
                return f"endpoint {endpoint.name} answered {upstream.status}", False
            return await self._relay(req, ctx, upstream, deadline)
        except asyncio.CancelledError:
            control.end_attempt(
                ctx, ResponseInfo(status=upstream.status, error="client_disconnect")
            )
            raise
        finally:
            upstream.release()

    async def _encode(
        self, request: Request, encoders: str, hdrs: dict[str, str], payload: bytes
    ) -> bytes:
        """E/P/D: run the encode leg; the next leg's body, with any ``ec_transfer_params``."""
        body = msgspec.json.decode(payload)
        if not isinstance(body, dict):
            return payload
        params = await self.encode_leg.run(
            encoders, hdrs.items(), body, collect=True, request_id=request.request_id
        )
        return payload if params is None else msgspec.json.encode(with_ec_params(body, params))

    def _evictable(self, ctx: RequestContext) -> Callable[[UpstreamResponse], None] | None:
        """With ``enableEviction``: what makes the attempt's answer cancellable from the
        moment it is sent (this gateway owns the upstream connection; closing it makes the
        model server abort the request). None otherwise (nothing is paid)."""
        control = self.control
        if control.flow is None or control.flow.eviction is None:
            return None

        def sent(upstream: UpstreamResponse) -> None:
            control.on_evict(ctx, partial(upstream.cancel, "evicted by flow control"))

        return sent

    def _evicted(self, ctx: RequestContext, status: int) -> Response:
        """A JSON answer cut by in-flight eviction: llm-d's 429 (``evicted``)."""
        self.control.end_attempt(ctx, ResponseInfo(status=status, error="evicted"))
        ctx.error = "evicted"
        code, headers, body = scheduling_error_reply(evicted())
        return Response(code, body, headers, content_type=JSON)

    async def _prefill(
        self, request: Request, prefiller: str, path: str, hdrs: dict[str, str], payload: bytes
    ) -> bytes:
        """P/D: run the prefill leg; the decode leg's body (unchanged if it failed)."""
        body = msgspec.json.decode(payload)
        if not isinstance(body, dict):
            return payload
        params = await self.prefill_leg.run(
            prefiller,
            path,
            hdrs.items(),
            body,
            chat=request.kind == "chat",
            request_id=request.request_id,
        )
        return payload if params is None else msgspec.json.encode(decode_body(body, params))

    async def _relay(
        self,
        req: HttpRequest,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        deadline: float,
    ) -> Response | StreamResponse:
        assert ctx.request is not None and ctx.endpoint is not None
        control = self.control
        request = ctx.request
        endpoint = ctx.endpoint
        info = ResponseInfo(status=upstream.status)
        headers = downstream_headers(upstream.headers)
        stamped = control.response_headers(ctx)  # ResponseHeaderProcessors' (rollout screener)
        if stamped:
            headers.update(stamped)
        headers[HEADER_REQUEST_ID] = request.request_id
        headers[HEADER_SERVED_BY] = endpoint.name
        if not upstream.content_type.startswith("text/event-stream"):
            ctx.stream = False
            try:
                data = await upstream.read()  # bounded by the deadline given to post
            except TimeoutError:
                control.end_attempt(ctx, ResponseInfo(status=upstream.status, error="timeout"))
                ctx.error = "timeout"
                return json_error(504, f"endpoint {endpoint.name} did not finish in time")
            except UpstreamStreamError as exc:
                if ctx.evicted:
                    return self._evicted(ctx, upstream.status)
                control.end_attempt(ctx, ResponseInfo(status=upstream.status, error="stream_error"))
                ctx.error = "stream_error"
                return json_error(502, f"endpoint {endpoint.name} broke off its answer: {exc}")
            if upstream.status < 300:
                _set_usage(info, usage_from_json(data))
            elif upstream.status >= 500:
                info.error = "upstream_5xx"
                if not data.lstrip().startswith(b"{"):
                    data = error_body(
                        f"endpoint {endpoint.name} answered {upstream.status}",
                        status=upstream.status,
                    )
                    headers["Content-Type"] = JSON
            control.end_attempt(ctx, info)
            headers.update(info.headers)
            ctx.error = info.error
            return Response(upstream.status, data, headers)
        # Streaming: pass each chunk on as it arrives; no buffering.
        resp = StreamResponse(upstream.status, headers)
        await resp.prepare(req)
        tail = b""
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in upstream.iter_chunks():
                    if ctx.ttft_s is None:
                        control.first_byte(ctx)
                    try:
                        await resp.write(chunk)
                    except ConnectionResetError:
                        # the tail holds the relayed stream's last bytes: [DONE] is the last
                        ctx.delivered = _SSE_DONE in tail
                        info.error = None if ctx.delivered else "client_disconnect"
                        break
                    tail = tail + chunk if len(tail) < _SSE_TAIL_BYTES else tail[-4096:] + chunk
            ctx.delivered = _SSE_DONE in tail  # once a stream, not once a chunk
        except asyncio.CancelledError:
            ctx.delivered = _SSE_DONE in tail
            if ctx.delivered:  # the client has the whole answer and hung up: a success
                _set_usage(info, usage_from_sse(tail))
                control.end_attempt(ctx, info)
                ctx.status = upstream.status
            raise
        except (UpstreamStreamError, TimeoutError) as exc:
            if ctx.evicted:
                # the client already has a 200: a terminal SSE error event carries llm-d's
                # 429, then the stream is closed
                info.error = "evicted"
                ctx.status = 429
                event = sse_error_event(evicted().message, status=429)
            else:
                info.error = "timeout" if isinstance(exc, TimeoutError) else "stream_error"
                message = f"endpoint {endpoint.name} " + (
                    "timed out" if info.error == "timeout" else f"broke off the stream: {exc}"
                )
                log.warning("request %s: %s", request.request_id, message)
                event = sse_error_event(message, status=502)
            with contextlib.suppress(ConnectionResetError):
                await resp.write(event)
        _set_usage(info, usage_from_sse(tail))
        ctx.error = info.error
        control.end_attempt(ctx, info)
        if info.error == "client_disconnect":
            ctx.status = 499
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


#: The OpenAI stream's last event: once relayed, the client has the whole answer.
_SSE_DONE = b"data: [DONE]"


def _set_usage(info: ResponseInfo, usage: Usage | None) -> None:
    if usage is not None:
        info.prompt_tokens = usage.prompt_tokens
        info.completion_tokens = usage.completion_tokens
        info.cached_tokens = usage.cached_tokens
