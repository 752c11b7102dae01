"""``envoy.service.ext_proc.v3.ExternalProcessor/Process``: one gRPC stream per HTTP request.

Message order on a stream (Envoy's ext_proc filter, GIE's EPP protocol, docs/proposals/004):

1. ``request_headers``. In ``FULL_DUPLEX_STREAMED`` mode (GIE's setting) nothing is answered
   yet: the reply to the headers carries the routing decision, which needs the body. In
   ``BUFFERED`` mode Envoy waits for the reply before sending the body, so the headers are
   let through at once (stripped of client-sent routing headers) and the decision rides on
   the body reply. Headers with ``end_of_stream`` (no body) get a random endpoint, as in GIE.
2. ``request_body`` chunks until ``end_of_stream``; then: parse (400), schedule (503 / 429),
   PreRequest hooks, and reply with ``x-gateway-destination-endpoint`` (overwriting any
   client copy), the same value in dynamic metadata ``envoy.lb``, ``clear_route_cache``,
   ``content-length``, and, in full-duplex mode, the body re-sent in <= 62,000-byte chunks.
3. ``response_headers`` / ``response_body`` / trailers: passed through (echoed in full-duplex
   mode) while usage is read from SSE ``data:`` lines or the JSON body; the ResponseComplete
   hooks run once at end of stream, or when the stream breaks (client gone, Envoy reset).

Failures become an ImmediateResponse with OpenAI's JSON error body.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import msgspec
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from kvgate.errors import BadRequestError, RequestError, SchedulingError
from kvgate.extproc.director import Director, destination_of
from kvgate.extproc.messages import (
    dynamic_metadata,
    header_map,
    header_mutation,
    immediate_response,
    lb_metadata,
    streamed_body_responses,
    subset_hint,
)
from kvgate.flowcontrol.controller import evicted
from kvgate.openai.errors import error_body, request_error_body, scheduling_error_reply
from kvgate.openai.requests import parse_body, request_kind_for_path
from kvgate.openai.usage import UsageReader
from kvgate.requestcontrol.control import RequestContext
from kvgate.requestcontrol.parsers import ClaimedUsageReader, usage_reader_for
from kvgate.scheduling.types import (
    HEADER_DESTINATION,
    HEADER_DESTINATION_SUBSET,
    HEADER_MODEL_REWRITE,
    HEADER_REQUEST_ID,
    ROUTING_HEADERS,
    RequestKind,
    ResponseInfo,
)

log = logging.getLogger("kvgate.epp")

FULL_DUPLEX = pm.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = pm.ProcessingMode.BUFFERED
#: Response header GIE's EPP adds to show the response went through it.
HEADER_WENT_INTO_RESP = "x-went-into-resp-headers"

Replies = list[ep.ProcessingResponse]

_encoder = msgspec.json.Encoder()
# Replies that never vary, built once (protobuf messages are only read when sent).
_RESPONSE_HEADERS_REPLY = ep.ProcessingResponse(
    response_headers=ep.HeadersResponse(
        response=ep.CommonResponse(header_mutation=header_mutation({HEADER_WENT_INTO_RESP: "true"}))
    )
)
_EMPTY_RESPONSE_BODY_REPLY = ep.ProcessingResponse(response_body=ep.BodyResponse())


def _response_headers_reply(
    info: ResponseInfo | None, stamped: dict[str, str] | None = None
) -> ep.ProcessingResponse:
    """The response-headers reply, with any headers ResponseHeaderProcessors (``stamped``)
    and ResponseComplete plugins added."""
    if (info is None or not info.headers) and not stamped:
        return _RESPONSE_HEADERS_REPLY
    added = {**(stamped or {}), **(info.headers if info is not None else {})}
    return ep.ProcessingResponse(
        response_headers=ep.HeadersResponse(
            response=ep.CommonResponse(
                header_mutation=header_mutation({HEADER_WENT_INTO_RESP: "true", **added})
            )
        )
    )


def _with_metadata(replies: Replies, info: ResponseInfo | None) -> Replies:
    """Put what the ResponseComplete plugins reported for Envoy (request-attribute-reporter)
    on the last reply, the one that ends the response, as llm-d does. The shared constant
    replies are copied, never changed."""
    if info is None or not info.metadata or not replies:
        return replies
    last = ep.ProcessingResponse()
    last.CopyFrom(replies[-1])
    last.dynamic_metadata.CopyFrom(dynamic_metadata(info.metadata))
    return [*replies[:-1], last]


class RequestStream:
    """State of one ext_proc stream; :meth:`on_message` returns the replies to send.

    Routing a request with a body may have to wait for flow control (the pool is saturated):
    then :meth:`on_message` returns nothing, :attr:`pending` is the task deciding, messages
    that arrive meanwhile are held, and the replies go out through :attr:`emit` (set by the
    transport) once the request is dispatched or rejected. Without flow control, or when the
    pool has room, routing is synchronous and costs no task.
    """

    def __init__(self, director: Director, default_body_mode: int = FULL_DUPLEX) -> None:
        self.director = director
        self.control = director.control
        self.request_mode = default_body_mode
        self.response_mode = default_body_mode
        self.headers: dict[str, str] = {}
        self.added_headers: dict[str, str] = {}  # headers we add upstream (x-request-id)
        self.subset: list[str] | None = None
        self.body: list[bytes] = []
        self.routed = False
        self.ctx: RequestContext | None = None  # set once the request is parsed
        self.forwarded = False  # the routing reply went out: the request reached a server
        self.status = 0
        self.usage: UsageReader | ClaimedUsageReader | None = None
        self.held_response: list[bytes] | None = None  # a JSON answer held until its end
        self.completed = False
        self.info: ResponseInfo | None = None  # how the forwarded attempt ended, once it has
        self.stamped: dict[str, str] | None = None  # ResponseHeaderProcessors' headers
        self.closed = False  # an immediate response ended the HTTP request
        self.pending: asyncio.Task[None] | None = None  # deciding, waiting for flow control
        self.backlog: list[ep.ProcessingRequest] = []  # messages that came while pending
        self.emit: Callable[[Replies], None] | None = None  # the transport's deferred send

    # --- dispatch -------------------------------------------------------------------------

    def on_message(self, msg: ep.ProcessingRequest) -> Replies:
        if self.pending is not None:
            self.backlog.append(msg)
            return []
        which = msg.WhichOneof("request")
        if which == "request_headers":
            return self._on_request_headers(msg)
        if which == "request_body":
            return self._on_request_body(msg.request_body)
        if which == "request_trailers":
            out = [] if self.routed else self._route_with_body()
            if self.closed or self.pending is not None:
                if self.pending is not None:
                    self.backlog.append(msg)  # answered after the decision
                return out
            return [*out, ep.ProcessingResponse(request_trailers=ep.TrailersResponse())]
        if which == "response_headers":
            return self._on_response_headers(msg.response_headers)
        if which == "response_body":
            return self._on_response_body(msg.response_body)
        if which == "response_trailers":
            return self._on_response_trailers()
        return []

    # --- request side ---------------------------------------------------------------------

    def _on_request_headers(self, msg: ep.ProcessingRequest) -> Replies:
        if msg.HasField("protocol_config"):
            self.request_mode = msg.protocol_config.request_body_mode
            self.response_mode = msg.protocol_config.response_body_mode
        self.headers = header_map(msg.request_headers)
        self.subset = subset_hint(msg, HEADER_DESTINATION_SUBSET)
        if not self.headers.get(HEADER_REQUEST_ID):
            self.added_headers[HEADER_REQUEST_ID] = str(uuid.uuid4())
        if msg.request_headers.end_of_stream or self.request_mode == pm.ProcessingMode.NONE:
            return self._route_without_body()
        if self.request_mode not in (FULL_DUPLEX, BUFFERED):
            # STREAMED / BUFFERED_PARTIAL forward the headers before the whole body is seen,
            # so there is no way to route on it: say so rather than misroute silently.
            mode = pm.ProcessingMode.BodySendMode.Name(self.request_mode)
            return self._fail(
                500,
                f"kvgate epp cannot route with ext_proc request_body_mode {mode}; "
                "configure FULL_DUPLEX_STREAMED or BUFFERED",
            )
        if self.request_mode == FULL_DUPLEX:
            return []  # the headers reply carries the decision; wait for the body
        return [
            ep.ProcessingResponse(
                request_headers=ep.HeadersResponse(
                    response=ep.CommonResponse(
                        header_mutation=header_mutation(self.added_headers, self._spoofed())
                    )
                )
            )
        ]

    def _on_request_body(self, body: ep.HttpBody) -> Replies:
        if self.routed:  # a body after a body-less decision: pass it on unchanged
            return self._pass_request_body(body)
        self.body.append(body.body)
        if body.end_of_stream:
            return self._route_with_body()
        return []

    def _pass_request_body(self, body: ep.HttpBody) -> Replies:
        if self.request_mode == FULL_DUPLEX:
            return streamed_body_responses(body.body, request_side=True)[-1:]
        return [ep.ProcessingResponse(request_body=ep.BodyResponse())]

    def _spoofed(self) -> list[str]:
        """Client-sent routing headers to drop upstream."""
        return [h for h in ROUTING_HEADERS if h in self.headers]

    def _route_without_body(self) -> Replies:
        self.routed = True
        try:
            endpoint = self.director.pick_without_body(self.subset)
        except SchedulingError as exc:
            return self._fail(exc.status, str(exc))
        destination = endpoint.hostport
        common = ep.CommonResponse(
            header_mutation=header_mutation(
                {**self.added_headers, HEADER_DESTINATION: destination},
                [h for h in self._spoofed() if h != HEADER_DESTINATION],
            ),
            clear_route_cache=True,
        )
        return [
            ep.ProcessingResponse(
                request_headers=ep.HeadersResponse(response=common),
                dynamic_metadata=lb_metadata({HEADER_DESTINATION: destination}),
            )
        ]

    def _route_with_body(self) -> Replies:
        """Parse, find candidates, then admit and schedule: synchronously when flow control
        is off or the pool has room, else in a task that waits while it is saturated."""
        started = time.perf_counter()
        self.routed = True
        raw = b"".join(self.body)
        self.body = []
        path = self.headers.get(":path", "")
        control = self.control
        ctx = self.ctx = control.begin("epp", path.split("?", 1)[0])
        control.started(ctx)
        try:
            body = self._parse(ctx, raw)
            candidates = control.candidates(ctx, self.director.narrow(self.subset))
            if control.try_admit(ctx):  # flow control off, or the pool has room
                control.schedule(ctx, candidates)
                return self._forward(ctx, raw, body, started)
        except (RequestError, SchedulingError) as exc:
            return self._reject(ctx, exc)
        except Exception as exc:
            log.exception("routing failed")
            return self._reject(ctx, exc)
        self.pending = asyncio.get_running_loop().create_task(self._admit(ctx, raw, body, started))
        return []

    async def _admit(self, ctx: RequestContext, raw: bytes, body: bytes, started: float) -> None:
        control = self.control
        try:
            await control.wait_admission(ctx)
            # read again after a wait: the request goes where the cache is at dispatch time
            candidates = control.candidates(ctx, self.director.narrow(self.subset))
            control.schedule(ctx, candidates)
            replies = self._forward(ctx, raw, body, started)
        except asyncio.CancelledError:  # Envoy reset the stream: the client is gone
            ctx.error = ctx.error or "client_disconnect"
            self.pending = None
            raise
        except (RequestError, SchedulingError) as exc:
            replies = self._reject(ctx, exc)
        except Exception as exc:
            log.exception("routing failed")
            replies = self._reject(ctx, exc)
        self.pending = None
        backlog, self.backlog = self.backlog, []
        for msg in backlog:
            if self.closed:
                break
            replies += self.on_message(msg)
        if self.emit is not None:
            self.emit(replies)

    def _parse(self, ctx: RequestContext, raw: bytes) -> bytes:
        """Build the scheduler's Request; returns the body to forward (re-encoded only when
        the gateway rewrites the model)."""
        path = self.headers.get(":path", "").split("?", 1)[0]
        kind: RequestKind | None = request_kind_for_path(path)
        parsed: dict[str, Any] | None = None
        if kind is None and (self.control.passthrough or self.control.claims(path)):
            kind = "completions"  # passthrough-parser, or a claiming parser reads the body
        elif kind is None:  # other OpenAI endpoints: route on the body's shape
            parsed = parse_body(raw)
            kind = "chat" if "messages" in parsed else "completions"
            if kind == "completions" and "prompt" not in parsed:
                if not isinstance(parsed.get("model"), str) or not parsed["model"]:
                    raise BadRequestError(
                        "'model' is required and must be a non-empty string", param="model"
                    )
                parsed = {**parsed, "prompt": ""}
        headers = {k: v for k, v in self.headers.items() if k[:1] != ":"}
        rid = self.headers.get(HEADER_REQUEST_ID) or self.added_headers[HEADER_REQUEST_ID]
        request = self.control.parse(ctx, kind, raw, headers, request_id=rid, parsed=parsed)
        rewrite = self.headers.get(HEADER_MODEL_REWRITE)
        if rewrite and request.body is not None:
            request.target_model = rewrite
            return _encoder.encode({**request.body, "model": rewrite})
        return raw

    def _forward(self, ctx: RequestContext, raw: bytes, body: bytes, started: float) -> Replies:
        """The routing reply: destination, PreRequest headers, the (re-sent) body."""
        result = ctx.result
        assert result is not None
        destination = destination_of(result)
        headers = self.control.start_attempt(ctx, result.target)
        self.forwarded = True
        flow = self.control.flow
        if flow is not None and flow.eviction is not None:
            self.control.on_evict(ctx, self._evicted)
        set_headers = {
            **self.added_headers,
            **headers,
            HEADER_DESTINATION: destination,
            "content-length": str(len(body)),
        }
        common = ep.CommonResponse(
            header_mutation=header_mutation(
                set_headers, [h for h in self._spoofed() if h not in set_headers]
            ),
            clear_route_cache=True,
        )
        metadata = lb_metadata({HEADER_DESTINATION: destination})
        if self.request_mode == FULL_DUPLEX:
            replies = [
                ep.ProcessingResponse(
                    request_headers=ep.HeadersResponse(response=common), dynamic_metadata=metadata
                ),
                *streamed_body_responses(body, request_side=True),
            ]
        else:
            if body is not raw:  # re-sent only when changed
                common.body_mutation.body = body
            replies = [
                ep.ProcessingResponse(
                    request_body=ep.BodyResponse(response=common), dynamic_metadata=metadata
                )
            ]
        self.director.decision.observe(time.perf_counter() - started)
        return replies

    def _reject(self, ctx: RequestContext, exc: Exception) -> Replies:
        """An immediate response for a request that gets no endpoint; the request ends here."""
        if isinstance(exc, RequestError):
            ctx.error = type(exc).__name__
            replies = self._fail(exc.status, request_error_body(exc))
            self.control.finish(ctx, exc.status)
            return replies
        if isinstance(exc, SchedulingError):
            ctx.error = exc.reason
            status, headers, body = scheduling_error_reply(exc)
            replies = self._fail(status, body, headers)
            self.control.finish(ctx, status)
            return replies
        ctx.error = f"internal: {type(exc).__name__}"
        replies = self._fail(500, f"internal error while routing: {exc}")
        self.control.finish(ctx, 500)
        return replies

    def _fail(
        self, status: int, message: str | bytes, headers: dict[str, str] | None = None
    ) -> Replies:
        self.closed = True
        body = message if isinstance(message, bytes) else error_body(message, status=status)
        extra = {k.lower(): v for k, v in (headers or {}).items()}
        if status == 503 and "retry-after" not in extra:
            extra["retry-after"] = "1"
        rid = self.headers.get(HEADER_REQUEST_ID) or self.added_headers.get(HEADER_REQUEST_ID)
        if rid:
            extra[HEADER_REQUEST_ID] = rid
        return [immediate_response(status, body, extra, details=f"kvgate_epp_{status}")]

    # --- response side --------------------------------------------------------------------

    def _on_response_headers(self, headers: ep.HttpHeaders) -> Replies:
        values = header_map(headers)
        try:
            self.status = int(values.get(":status", "0"))
        except ValueError:
            self.status = 0
        claimed = usage_reader_for(self.ctx.request if self.ctx is not None else None)
        if claimed is not None:  # a gRPC answer: its parser reads the usage
            self.usage = claimed
        else:
            self.usage = UsageReader(values.get("content-type", ""))
            if self.ctx is not None:
                self.ctx.stream = self.usage.streaming
        if self.forwarded and self.ctx is not None:
            # ResponseHeaderProcessors' headers (the rollout screener's stamp)
            self.stamped = self.control.response_headers(self.ctx)
        if headers.end_of_stream or self.response_mode == pm.ProcessingMode.NONE:
            # no body will come (response_body_mode NONE: bodies bypass the EPP, no usage)
            info = self._complete(None)
            return _with_metadata([_response_headers_reply(info, self.stamped)], info)
        if self.response_mode == FULL_DUPLEX and self.forwarded and not self.usage.streaming:
            # A whole JSON answer: hold the headers until its end, as the request side
            # does, so ResponseComplete plugins' headers (session affinity's x-session-token)
            # can still be added. Server-sent events are never held.
            self.held_response = []
            return []
        if self.stamped:
            return [_response_headers_reply(None, self.stamped)]
        return [_RESPONSE_HEADERS_REPLY]

    def _on_response_body(self, body: ep.HttpBody) -> Replies:
        if self.usage is not None:
            self.usage.feed(body.body)
        ctx = self.ctx
        if ctx is not None and ctx.ttft_s is None and body.body:
            self.control.first_byte(ctx)
        if self.held_response is not None:
            self.held_response.append(body.body)
            if not body.end_of_stream:
                return []
            return self._release_response(end_of_stream=True)
        if self.response_mode == FULL_DUPLEX:
            out = [
                ep.ProcessingResponse(
                    response_body=ep.BodyResponse(
                        response=ep.CommonResponse(
                            body_mutation=ep.BodyMutation(
                                streamed_response=ep.StreamedBodyResponse(
                                    body=body.body, end_of_stream=body.end_of_stream
                                )
                            )
                        )
                    )
                )
            ]
        else:
            out = [_EMPTY_RESPONSE_BODY_REPLY]
        if body.end_of_stream:
            info = self._complete(None)
            out = _with_metadata(out, info)
            if info is not None and info.headers and self.response_mode == BUFFERED:
                # A buffered response's headers are still held by Envoy: ResponseComplete
                # plugins' headers (session-affinity's x-session-token) can reach the client.
                out = _with_metadata(
                    [
                        ep.ProcessingResponse(
                            response_body=ep.BodyResponse(
                                response=ep.CommonResponse(
                                    header_mutation=header_mutation(info.headers)
                                )
                            )
                        )
                    ],
                    info,
                )
        return out

    def _on_response_trailers(self) -> Replies:
        out = self._release_response(end_of_stream=False) if self.held_response is not None else []
        self._complete(None)
        return _with_metadata(
            [*out, ep.ProcessingResponse(response_trailers=ep.TrailersResponse())], self.info
        )

    def _release_response(self, *, end_of_stream: bool) -> Replies:
        """Send held response headers (with the completion hooks' headers) and body."""
        body = b"".join(self.held_response or ())
        self.held_response = None
        info = self._complete(None)
        replies = [_response_headers_reply(info, self.stamped)]
        chunks = streamed_body_responses(body, request_side=False)
        if not end_of_stream:  # trailers follow: the body does not end the stream
            chunks[-1].response_body.response.body_mutation.streamed_response.end_of_stream = False
            return [*replies, *chunks]
        return _with_metadata([*replies, *chunks], info)

    def _evicted(self) -> None:
        """Flow control evicted the forwarded request: end the attempt (429 in the request
        log) and send Envoy an ImmediateResponse 429, which resets the upstream request and
        ends the client's (llm-d's eviction answer). A JSON answer still held reaches the
        client as the 429; a stream already started is cut."""
        if self.completed or self.closed or self.emit is None:
            return
        self._complete("evicted")
        status, headers, body = scheduling_error_reply(evicted())
        self.emit(self._fail(status, body, headers))

    def _complete(self, error: str | None) -> ResponseInfo | None:
        """End the forwarded attempt exactly once: ResponseComplete hooks, usage, and the
        request's end (metrics and the request log line)."""
        ctx = self.ctx
        if self.completed or ctx is None or not self.forwarded:
            return None
        self.completed = True
        usage = self.usage.finish() if self.usage is not None else None
        if error is None and self.status >= 500:
            error = "upstream_5xx"
        info = ResponseInfo(status=self.status, error=error)
        if usage is not None:
            info.prompt_tokens = usage.prompt_tokens
            info.completion_tokens = usage.completion_tokens
            info.cached_tokens = usage.cached_tokens
        control = self.control
        control.end_attempt(ctx, info)
        self.info = info
        ctx.error = info.error
        status = self.status
        if error == "client_disconnect" or (error == "stream_error" and not status):
            status = 499
        elif error == "evicted":
            status = 429
        control.finish(ctx, status)
        return info

    def close(self, clean: bool = False) -> str:
        """The gRPC stream ended; force completion if the response never finished.

        ``clean``: Envoy closed the stream itself, with nothing more to send. With response
        processing off (response_header_mode SKIP) that is how a request ends: it completes
        without a status (0, no error) rather than as a failure.
        """
        if self.pending is not None:  # still queued in flow control: the client left
            self.pending.cancel()
            self.pending = None
            ctx = self.ctx
            if ctx is not None:
                ctx.error = "client_disconnect"
                self.control.finish(ctx, 499)
            return "broken"
        if self.forwarded and not self.completed:
            # With response bodies off (NONE), Envoy may end the stream by a reset rather
            # than a close once the request is forwarded (a race with the response); either
            # way nothing about the response was ever going to arrive.
            unobserved = clean or self.response_mode == pm.ProcessingMode.NONE
            if unobserved and self.usage is None:
                self._complete(None)
                return "ok"
            self._complete("client_disconnect" if self.status == 0 else "stream_error")
            return "broken"
        if self.closed:
            return "rejected"
        return "ok"

    def finish(self, clean: bool = False) -> str:
        """:meth:`close`, counted in ``kvgate_epp_streams_total``: every server (grpcio's
        servicer, :mod:`kvgate.extproc.h2server`) ends each call through here, once."""
        outcome = self.close(clean)
        self.director.stream_ended(outcome)
        return outcome


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """grpc.aio servicer: one :class:`RequestStream` per call."""

    def __init__(self, director: Director, default_body_mode: int = FULL_DUPLEX) -> None:
        self.director = director
        self.default_body_mode = default_body_mode
        flow = director.control.flow
        #: enableEviction may end a stream between Envoy's messages: then the wait for the
        #: next message is woken (two futures a message; nothing without eviction)
        self.wakeable = flow is not None and flow.eviction is not None

    async def Process(
        self,
        request_iterator: AsyncIterator[ep.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        stream = RequestStream(self.director, self.default_body_mode)
        deferred: Replies = []
        stream.emit = deferred.extend
        messages: AsyncIterator[ep.ProcessingRequest | None] = request_iterator
        if self.wakeable:
            woken = asyncio.Event()

            def emit(replies: Replies) -> None:
                deferred.extend(replies)
                woken.set()

            stream.emit = emit
            messages = _wakeable(request_iterator, woken)
        clean = False
        try:
            async for msg in messages:
                if deferred:  # decided between messages (an eviction): sent before this one
                    for reply in deferred:
                        yield reply
                    deferred.clear()
                    if stream.closed:
                        break
                if msg is None:  # woken for the replies above
                    continue
                for reply in stream.on_message(msg):
                    yield reply
                if stream.pending is not None:  # flow control holds the request: wait here
                    await asyncio.shield(stream.pending)
                    for reply in deferred:
                        yield reply
                    deferred.clear()
                if stream.closed:
                    break
            # grpc.aio also ends the request iterator quietly when the client resets the
            # stream (the cancellation only reaches the next await), so a reset before the
            # response is seen counts as clean here; the h2 server tells them apart
            clean = True
        finally:
            stream.finish(clean)


async def _wakeable(
    messages: AsyncIterator[ep.ProcessingRequest], woken: asyncio.Event
) -> AsyncIterator[ep.ProcessingRequest | None]:
    """Envoy's messages, and None whenever ``woken`` is set while the next one is awaited."""
    it = aiter(messages)
    pending: asyncio.Future[ep.ProcessingRequest] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(it))
            wake = asyncio.ensure_future(woken.wait())
            try:
                await asyncio.wait((pending, wake), return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
            if woken.is_set():
                woken.clear()
                yield None
                continue  # the message, if it came too, is taken on the next turn
            try:
                msg = pending.result()
            except StopAsyncIteration:
                pending = None
                return
            pending = None
            yield msg
    finally:
        if pending is not None:
            pending.cancel()


def add_to_server(servicer: ExtProcServicer, server: grpc.aio.Server) -> None:
    ep_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
