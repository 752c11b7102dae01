"""One request's path, whichever front door it came through (no I/O, no transport).

The HTTP gateway (:mod:`kvgate.gateway`) and the Envoy ext_proc picker (:mod:`kvgate.extproc`)
both drive a :class:`RequestContext` through :class:`RequestControl` in this order, which is
llm-d's request-control order (its director)::

    begin -> parse (400/413) -> candidates (404 / 503) -> admit: flow control (429/503 when
    rejected, waits while the pool is saturated) -> schedule: screeners, data preparation, filters,
    scorers, picker (503 no candidates / 429 no pick) -> for each attempt: start_attempt
    (PreRequest hooks, dispatch accounting) -> response_received / first_byte ->
    end_attempt (ResponseComplete hooks, usage, outlier detection; exactly once per attempt)
    -> finish (metrics and the request log line; exactly once per request)

Invariants the front doors rely on:

* ``finish`` runs exactly once per ``begin`` (front doors call it in a ``finally``), so
  ``kvgate_requests_total`` and ``inference_objective_request_total`` reconcile with what
  clients saw; an attempt left open when ``finish`` runs is ended as ``client_disconnect``.
* every attempt that reached ``start_attempt`` is reported to flow control as dispatched and,
  exactly once, as completed, so the saturation detector's in-flight counts cannot drift.
* A plugin hook that raises never breaks the request: it is logged and counted.
* ``finish`` hands the finished context to every callable in ``RequestControl.on_finish``
  (the dashboard's ring, :mod:`kvgate.dashboard.state`; every plugin with a
  ``request_finished`` method, e.g. predicted-latency-producer's training), last, with
  ``ctx.duration_s`` set;
  with none registered it costs one empty-list test. An observer that raises is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from kvgate.endpoints.outlier import Outcome
from kvgate.endpoints.pool import EndpointPool
from kvgate.errors import ModelNotFoundError, NoCandidatesError
from kvgate.openai.requests import build_request, parse_body, strip_routing_headers
from kvgate.openai.usage import Usage
from kvgate.plugins.base import RequestHeaderProcessor, ResponseHeaderProcessor, Screener
from kvgate.plugins.requestheader import AGENT_IDENTITY
from kvgate.requestcontrol import tracing
from kvgate.requestcontrol.eppmetrics import Labels
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.requestcontrol.reqlog import log_request, scores_of
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import (
    HEADER_FAIRNESS_ID,
    HEADER_OBJECTIVE,
    HEADER_REQUEST_ID,
    Endpoint,
    ProfileRunResult,
    Request,
    RequestKind,
    ResponseInfo,
    SchedulingResult,
)

if TYPE_CHECKING:
    from kvgate.endpoints.outlier import OutlierDetector
    from kvgate.endpoints.retry import RetryBudget
    from kvgate.flowcontrol.controller import FlowController, FlowItem
    from kvgate.flowcontrol.objectives import ObjectiveStore

log = logging.getLogger("kvgate.requests.control")

#: llm-d's newer name for the fairness-id header (GIE's is HEADER_FAIRNESS_ID); either is read.
HEADER_LLMD_FAIRNESS_ID = "x-llm-d-inference-fairness-id"

Door = Literal["gateway", "epp"]


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything known of one request as it passes; the front door holds it, request
    control fills it, and :meth:`RequestControl.finish` reports it."""

    door: Door
    path: str
    started: float  # time.perf_counter() at arrival
    request: Request | None = None
    model: str = ""
    result: SchedulingResult | None = None
    endpoint: Endpoint | None = None  # the current (or last) attempt's endpoint
    attempts: int = 0
    status: int = 0  # the HTTP status the client got (499: the client left)
    # the whole answer reached the client (a stream's ``data: [DONE]`` was relayed): a client
    # that hangs up after it is not a 499, even if the stream's last bytes were still due
    delivered: bool = False
    error: str | None = None  # failure kind, None on success
    stream: bool = False
    ttft_s: float | None = None
    queue_wait_s: float | None = None
    fairness_id: str = ""
    flow_priority: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    flow_item: FlowItem | None = None
    attempt_open: bool = False
    finished: bool = False
    trace: object | None = None  # the tracer's spans for this request (requestcontrol.tracing)
    duration_s: float | None = None  # arrival to finish, set by RequestControl.finish
    metric_labels: Labels | None = None  # GIE's label values, from parse (running gauges)
    # what ResponseComplete plugins reported for Envoy (request-attribute-reporter); the epp
    # sends it as ext_proc dynamic metadata, both doors write it into the request log line
    dynamic_metadata: dict[str, dict[str, float]] | None = None
    # flow control's in-flight eviction (enableEviction): set once the request is chosen;
    # evict_hook is how its front door ends the forwarded attempt (RequestControl.on_evict)
    evicted: bool = False
    evict_hook: Callable[[], None] | None = None

    def set_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens
            self.cached_tokens = usage.cached_tokens


#: Told of every finished request (see the module docstring); must be cheap and not block.
FinishObserver = Callable[[RequestContext], None]


def _retarget(result: SchedulingResult, endpoint: Endpoint) -> SchedulingResult:
    """The same cycle's result with ``endpoint`` as the primary target (for a retry)."""
    results = dict(result.profile_results)
    results[result.primary_profile_name] = ProfileRunResult((endpoint,), result.primary.scored)
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


def _outcome_of(info: ResponseInfo) -> Outcome:
    """The outlier detector's word for how an attempt ended."""
    if info.error == "connect":
        return "connect"
    if info.error == "timeout":
        return "timeout"
    if info.status >= 500 or info.error == "upstream_5xx":
        return "5xx"
    return "success"


class RequestControl:
    """The one request path both front doors call; see the module docstring.

    ``models_of(endpoint_name)`` returns the models an endpoint lists (None while unknown);
    ``flow`` is the flow controller when the ``flowControl`` feature gate is on; ``objectives``
    maps an InferenceObjective's name to its priority; ``outlier`` ejects endpoints that keep
    failing (the pool leaves them out of ``candidates()``); ``retry_budget`` bounds retries
    to a share of the requests in flight.
    """

    #: True for passthrough-parser's subclass (kvgate.requestcontrol.passthrough): bodies are
    #: not parsed, so a front door must not read them either.
    passthrough = False

    def claims(self, path: str) -> bool:
        """Whether a claiming parser reads bodies sent to ``path`` itself (so the front door
        must not read them as JSON); kvgate.requestcontrol.parsers overrides it."""
        return False

    def __init__(
        self,
        pool: EndpointPool,
        scheduler: Scheduler,
        metrics: RequestMetrics,
        *,
        models_of: Callable[[str], set[str] | frozenset[str] | None] | None = None,
        flow: FlowController | None = None,
        objectives: ObjectiveStore | None = None,
        outlier: OutlierDetector | None = None,
        retry_budget: RetryBudget | None = None,
        log_requests: bool = True,
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.metrics = metrics
        self.models_of = models_of
        self.flow = flow
        self.objectives = objectives
        self.outlier = outlier
        self.retry_budget = retry_budget
        if outlier is not None:
            pool.set_outlier(outlier)
        if flow is not None:  # llm-d's llm_d_epp_flow_control_* names for its series
            metrics.mirror_flow(flow.metrics)
        self.log_requests = log_requests
        # --tracing's tracer (None when off: one `is not None` test per hook, no import)
        self.tracer: tracing.RequestTracer | None = tracing.installed()
        self.on_finish: list[FinishObserver] = []
        # plugins that learn from finished requests (predicted-latency-producer's training)
        for plugin in scheduler.plugins:
            observer = getattr(plugin, "request_finished", None)
            if callable(observer):
                self.on_finish.append(observer)
        scheduler.observe = metrics.observe_plugin
        pool.on_removed(scheduler.endpoints_removed)
        # RequestHeaderProcessors (agent-identity): run in parse, before admission; when none
        # is configured the tuple is empty and parse pays one falsy test
        self._header_processors: tuple[RequestHeaderProcessor, ...] = tuple(
            p for p in scheduler.plugins if isinstance(p, RequestHeaderProcessor)
        )
        # Screeners (disaggregatedset-rollout-screener): run in schedule, before the profiles
        self._screeners: tuple[Screener, ...] = tuple(
            p for p in scheduler.plugins if isinstance(p, Screener)
        )
        # ResponseHeaderProcessors: run when the model server's response headers arrive
        self._response_header: tuple[ResponseHeaderProcessor, ...] = tuple(
            p for p in scheduler.plugins if isinstance(p, ResponseHeaderProcessor)
        )

    async def start(self) -> None:
        if self.flow is not None:
            await self.flow.start()

    async def stop(self) -> None:
        """Requests still queued in flow control are answered (503, shutting down)."""
        if self.flow is not None:
            await self.flow.stop()

    # --- the request side -------------------------------------------------------------------

    def begin(self, door: Door, path: str) -> RequestContext:
        return RequestContext(door, path, time.perf_counter())

    def parse(
        self,
        ctx: RequestContext,
        kind: RequestKind,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str | None = None,
        parsed: dict[str, Any] | None = None,
    ) -> Request:
        """Body and headers -> the scheduler's Request (RequestError: 400 in OpenAI's shape).

        ``headers`` may carry any case and client-sent routing headers; they are normalised
        here. The fairness id and the objective's priority are read for flow control.
        ``parsed`` is the body already decoded, when the front door had to look inside.
        """
        if parsed is None:
            parsed = parse_body(body)
        raw_model = parsed.get("model")
        if isinstance(raw_model, str):
            ctx.model = raw_model
        ctx.stream = parsed.get("stream") is True
        clean = strip_routing_headers(headers)
        if request_id is not None:
            clean[HEADER_REQUEST_ID] = request_id
        request = build_request(kind, parsed, clean, body_size=len(body), request_id=request_id)
        ctx.request = request
        ctx.model = request.model
        self._classify(ctx, request, clean)
        return request

    def _classify(self, ctx: RequestContext, request: Request, clean: Mapping[str, str]) -> None:
        """The parsed request's flow: fairness id (a header, else what the
        RequestHeaderProcessors record), the objective's priority, GIE's metric labels."""
        ctx.fairness_id = clean.get(HEADER_FAIRNESS_ID) or clean.get(HEADER_LLMD_FAIRNESS_ID, "")
        if self._header_processors:
            self._process_headers(ctx, request)
        objective = clean.get(HEADER_OBJECTIVE)
        if objective and self.objectives is not None:
            ctx.flow_priority = self.objectives.priority(objective)
            request.objective_priority = ctx.flow_priority
        ctx.metric_labels = self.metrics.parsed(
            request.model,
            request.effective_model,
            ctx.fairness_id,
            ctx.flow_priority,
            request.body_size,
        )

    def _process_headers(self, ctx: RequestContext, request: Request) -> None:
        """Run the RequestHeaderProcessors; an explicit fairness header wins over the agent
        identity they record (llm-d's director: header, then ``agent-identity``, then the
        default flow). A processor that raises is logged and skipped."""
        observe = self.metrics.observe_plugin
        for plugin in self._header_processors:
            started = time.perf_counter()
            try:
                plugin.request_header(request)
            except Exception:
                log.exception("request_header of %s/%s failed", plugin.type_name, plugin.name)
            observe("request_header", plugin.type_name, plugin.name, time.perf_counter() - started)
        if not ctx.fairness_id:
            identity = request.extra.get(AGENT_IDENTITY)
            if isinstance(identity, str):
                ctx.fairness_id = identity

    def candidates(
        self, ctx: RequestContext, subset: Callable[[list[Endpoint]], list[Endpoint]] | None = None
    ) -> list[Endpoint]:
        """Endpoints in rotation that serve the request's model, narrowed by ``subset``.

        Raises ModelNotFoundError (404) when endpoints list models and none serves it, and
        NoCandidatesError (503) when nothing is in rotation.
        """
        ready = self.pool.candidates()
        if subset is not None:
            ready = subset(ready)
        if not ready:
            raise NoCandidatesError("no model server is healthy right now; retry shortly")
        models_of = self.models_of
        if models_of is None or ctx.request is None:
            return ready
        model = ctx.request.model
        out: list[Endpoint] = []
        served: set[str] = set()
        for endpoint in ready:
            models = models_of(endpoint.name)
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

    async def admit(self, ctx: RequestContext) -> None:
        """Flow control: returns at once when the pool has room (or flow control is off),
        waits while it is saturated, raises FlowRejected (429/503) when the request is shed,
        over capacity or past its TTL. A client that leaves while queued cancels the wait."""
        if not self.try_admit(ctx):
            await self.wait_admission(ctx)

    def try_admit(self, ctx: RequestContext) -> bool:
        """The synchronous part of :meth:`admit`: True when the request may be scheduled now,
        False when it must wait (:meth:`wait_admission`); raises FlowRejected."""
        flow = self.flow
        if flow is None or ctx.request is None:
            return True
        from kvgate.flowcontrol.controller import FlowItem

        item = FlowItem(
            request_id=ctx.request.request_id,
            fairness_id=ctx.fairness_id,
            priority=ctx.flow_priority,
            byte_size=ctx.request.body_size,
            model=ctx.request.model,
        )
        ctx.flow_item = item
        if flow.try_admit(item):
            ctx.queue_wait_s = 0.0
            return True
        return False

    async def wait_admission(self, ctx: RequestContext) -> None:
        """Queue a request :meth:`try_admit` could not admit until flow control dispatches it."""
        assert self.flow is not None and ctx.flow_item is not None
        ctx.queue_wait_s = await self.flow.wait(ctx.flow_item)

    def schedule(self, ctx: RequestContext, candidates: Sequence[Endpoint]) -> SchedulingResult:
        """Screen, then run the scheduler (NoCandidatesError 503, SchedulingFailedError 429)."""
        assert ctx.request is not None
        if self._screeners:
            candidates = self._screen(ctx.request, candidates)
        t0 = time.perf_counter()
        try:
            result = self.scheduler.schedule(ctx.request, candidates)
        except Exception:
            target = ctx.request.effective_model
            self.metrics.scheduled(None, time.perf_counter() - t0, target)
            raise
        elapsed = time.perf_counter() - t0
        ctx.result = result
        self.metrics.scheduled(result.target, elapsed, ctx.request.effective_model)
        return result

    def _screen(self, request: Request, candidates: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The Screeners in turn (llm-d's order: after admission, before the profiles); a
        screener that raises is logged and skipped, one that leaves nothing is a 503."""
        ready = self.pool.candidates()
        observe = self.metrics.observe_plugin
        for plugin in self._screeners:
            started = time.perf_counter()
            try:
                candidates = plugin.screen(request, candidates, ready)
            except Exception:
                log.exception("screen of %s/%s failed", plugin.type_name, plugin.name)
            observe("screener", plugin.type_name, plugin.name, time.perf_counter() - started)
            if not candidates:
                raise NoCandidatesError("screeners eliminated all endpoint candidates")
        return candidates

    async def route(
        self, ctx: RequestContext, subset: Callable[[list[Endpoint]], list[Endpoint]] | None = None
    ) -> SchedulingResult:
        """candidates -> admit -> schedule: the request side up to the pick.

        Candidates are checked before admission (a request for an unknown model is not
        queued) and read again after a wait, so the request goes where the cache is when it
        is dispatched.
        """
        candidates = self.candidates(ctx, subset)
        if self.flow is not None:
            await self.admit(ctx)
            if ctx.queue_wait_s:
                candidates = self.candidates(ctx, subset)
        return self.schedule(ctx, candidates)

    def attempt_result(self, ctx: RequestContext, endpoint: Endpoint) -> SchedulingResult:
        """The scheduling result as an attempt at ``endpoint`` sees it (retries retarget)."""
        assert ctx.result is not None
        if ctx.result.target is endpoint:
            return ctx.result
        return _retarget(ctx.result, endpoint)

    def start_attempt(self, ctx: RequestContext, endpoint: Endpoint) -> dict[str, str]:
        """PreRequest hooks for an attempt at ``endpoint``; returns the headers they add for
        the model server."""
        assert ctx.request is not None
        if ctx.attempt_open:
            raise RuntimeError("start_attempt while an attempt is open")
        ctx.endpoint = endpoint
        ctx.attempts += 1
        ctx.attempt_open = True
        if ctx.attempts == 1:  # the request side is done: parsed, admitted, scheduled
            self.metrics.processed(time.perf_counter() - ctx.started)
        if self.outlier is not None:
            self.outlier.started(endpoint.name)
        headers = self.scheduler.pre_request(ctx.request, self.attempt_result(ctx, endpoint))
        if self.flow is not None and ctx.flow_item is not None:
            self.flow.dispatched(endpoint.name, retry=ctx.attempts > 1)
            if self.flow.eviction is not None:
                self.flow.eviction.track(
                    ctx.request.request_id, ctx.flow_priority, partial(self._evict, ctx)
                )
        if self.tracer is not None:  # W3C traceparent naming the attempt's span
            headers.update(self.tracer.start_attempt(ctx, endpoint))
        return headers

    def first_byte(self, ctx: RequestContext) -> None:
        """The first response byte is on its way to the client (TTFT for streams)."""
        if ctx.ttft_s is None:
            ctx.ttft_s = time.perf_counter() - ctx.started

    def response_headers(self, ctx: RequestContext) -> dict[str, str] | None:
        """The model server's response headers arrived: the headers ResponseHeaderProcessors
        add for the client (None when none is configured: one falsy test). A processor that
        raises is logged and skipped."""
        if not self._response_header or ctx.request is None or ctx.endpoint is None:
            return None
        headers: dict[str, str] = {}
        for plugin in self._response_header:
            try:
                plugin.response_header(ctx.request, ctx.endpoint, headers)
            except Exception:
                log.exception("response_header of %s/%s failed", plugin.type_name, plugin.name)
        return headers

    def end_attempt(self, ctx: RequestContext, info: ResponseInfo) -> None:
        """ResponseComplete hooks for the open attempt, exactly once; a no-op otherwise."""
        if not ctx.attempt_open or ctx.request is None or ctx.endpoint is None:
            return
        ctx.attempt_open = False
        endpoint = ctx.endpoint
        if info.prompt_tokens is not None or info.completion_tokens is not None:
            ctx.prompt_tokens = info.prompt_tokens
            ctx.completion_tokens = info.completion_tokens
            ctx.cached_tokens = info.cached_tokens
        try:
            self.scheduler.response_complete(ctx.request, info, endpoint)
        except Exception:  # a plugin bug must not break the request
            log.exception("response_complete hook failed for request %s", ctx.request.request_id)
        if info.metadata:
            ctx.dynamic_metadata = info.metadata
        if self.outlier is not None:
            if info.error == "client_disconnect":
                self.outlier.cancelled(endpoint.name)
            else:
                self.outlier.record(endpoint.name, _outcome_of(info))
        if self.flow is not None and ctx.flow_item is not None:
            if self.flow.eviction is not None:
                self.flow.eviction.untrack(ctx.request.request_id)
            self.flow.completed(endpoint.name)
        if self.tracer is not None:
            self.tracer.end_attempt(ctx, info)

    # --- in-flight eviction (flowControl.enableEviction) ---------------------------------------

    def on_evict(self, ctx: RequestContext, hook: Callable[[], None]) -> None:
        """The front door's way to end ``ctx``'s forwarded attempt if flow control evicts it
        (``kvgate serve`` cancels its upstream answer, ``kvgate epp`` sends Envoy a 429
        ImmediateResponse); run at once when the request was evicted before it was set."""
        ctx.evict_hook = hook
        if ctx.evicted and ctx.attempt_open:
            hook()

    def _evict(self, ctx: RequestContext) -> None:
        """Flow control chose ``ctx`` to free room for a blocked higher band (its eviction's
        callback): mark it, and let the front door end it; the attempt's end confirms it."""
        if ctx.evicted or not ctx.attempt_open:
            return
        ctx.evicted = True
        ctx.error = "evicted"
        if ctx.evict_hook is not None:
            ctx.evict_hook()

    # --- the end ------------------------------------------------------------------------------

    def started(self, ctx: RequestContext) -> None:
        """Count the request as in flight (the front door calls it once it will ``finish``)."""
        self.metrics.started(ctx.model or "unknown")
        if self.retry_budget is not None:
            self.retry_budget.request_started()

    def finish(self, ctx: RequestContext, status: int, error: str | None = None) -> None:
        """The client has its answer: close any open attempt, count, log. Exactly once."""
        if ctx.finished:
            return
        ctx.finished = True
        ctx.status = status
        if error is not None:
            ctx.error = error
        if ctx.attempt_open:  # the front door never saw the attempt end: the client left
            ctx.error = ctx.error or "client_disconnect"
            self.end_attempt(ctx, ResponseInfo(status=0, error=ctx.error))
        if self.retry_budget is not None:
            self.retry_budget.request_finished()
        elapsed = time.perf_counter() - ctx.started
        ctx.duration_s = elapsed
        request = ctx.request
        model = ctx.model or "unknown"
        target = request.effective_model if request is not None else model
        endpoint = ctx.endpoint.name if ctx.endpoint is not None else ""
        self.metrics.finished(
            model,
            target,
            endpoint,
            status,
            ctx.error,
            elapsed,
            ctx.ttft_s if ctx.stream else None,
            ctx.prompt_tokens,
            ctx.completion_tokens,
            ctx.cached_tokens,
            labels=ctx.metric_labels,
            stream=ctx.stream,
        )
        if self.tracer is not None:
            self.tracer.finish(ctx)
        if self.log_requests:
            fields: dict[str, Any] = {
                "door": ctx.door,
                "request_id": request.request_id if request is not None else None,
                "model": ctx.model or None,
                "target_model": request.target_model if request is not None else None,
                "path": ctx.path,
                "status": status,
                "endpoint": endpoint or None,
                "attempts": ctx.attempts,
                "stream": ctx.stream,
                "fairness_id": ctx.fairness_id or None,
                "priority": ctx.flow_priority,
                "queue_wait_ms": None
                if ctx.queue_wait_s is None
                else round(ctx.queue_wait_s * 1e3, 3),
                # streams only, as the TTFT histograms: the EPP sees a JSON answer's
                # first byte, the gateway relays it whole, and both must log the same
                "ttft_ms": None
                if ctx.ttft_s is None or not ctx.stream
                else round(ctx.ttft_s * 1e3, 3),
                "duration_ms": round(elapsed * 1e3, 3),
                "error": ctx.error,
                "prompt_tokens": ctx.prompt_tokens,
                "completion_tokens": ctx.completion_tokens,
                "cached_tokens": ctx.cached_tokens,
                "scores": scores_of(ctx.result),
            }
            if ctx.dynamic_metadata:
                fields["dynamic_metadata"] = ctx.dynamic_metadata
            log_request(fields)
        if self.on_finish:
            for observer in self.on_finish:
                try:
                    observer(ctx)
                except Exception:  # an observer's bug must not break the request
                    log.exception("on_finish observer failed")
