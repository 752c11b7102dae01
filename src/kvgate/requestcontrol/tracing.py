"""OpenTelemetry traces of the request path: ``kvgate serve --tracing``, ``kvgate epp --tracing``.

Off by default, and free when off: :class:`~kvgate.requestcontrol.control.RequestControl`
holds ``tracer = None`` and pays one ``is not None`` test per hook; this module imports
nothing of OpenTelemetry until :func:`setup` runs, so a process without ``--tracing`` never
loads it (tests/requestcontrol/test_tracing.py checks both).

What a traced request produces, whichever front door it came through:

* a ``gateway.request`` span (kind SERVER; GIE's EPP names its request span the same), a
  child of the client's W3C ``traceparent`` when it sent one, carrying the scheduling
  decision (:data:`REQUEST_ATTRIBUTES`);
* one ``gateway.upstream_attempt`` child span (kind CLIENT) per attempt at a model server
  (a retry is a second child), with the endpoint and the attempt's outcome;
* a ``traceparent`` naming the attempt's span in the headers ``start_attempt`` returns: the
  gateway sends it upstream, the EPP sets it as a header mutation (GIE injects its trace
  context there too), and vLLM started with ``--otlp-traces-endpoint`` continues the trace.

Configuration is OpenTelemetry's environment, with GIE's defaults where GIE sets one
(pkg/common/observability/tracing/telemetry.go in llm-d/llm-d-inference-scheduler):
``OTEL_SERVICE_NAME`` (per front door), ``OTEL_TRACES_EXPORTER`` (``console``, as GIE;
``otlp``; ``none``; a comma list), ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (``http://localhost:4317``, OTLP over gRPC, plaintext
unless ``https://`` or ``OTEL_EXPORTER_OTLP_INSECURE=false``, as GIE's ``WithInsecure``),
``OTEL_TRACES_SAMPLER`` (``parentbased_traceidratio``) with ``OTEL_TRACES_SAMPLER_ARG``
(``0.1``), ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_BSP_*``. Where GIE logs a bad value and
falls back, kvgate refuses to start with one line naming the variable (:class:`TracingError`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kvgate.errors import KvgateError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from kvgate.requestcontrol.control import RequestContext
    from kvgate.scheduling.types import Endpoint, ResponseInfo

__all__ = [
    "ATTEMPT_SPAN",
    "REQUEST_SPAN",
    "OtelRequestTracer",
    "RequestTracer",
    "TracingError",
    "TracingSettings",
    "install",
    "installed",
    "settings_from_env",
    "setup",
    "shutdown",
]

REQUEST_SPAN = "gateway.request"
ATTEMPT_SPAN = "gateway.upstream_attempt"
#: The instrumentation scope spans are recorded under.
INSTRUMENTATION = "kvgate.requestcontrol"
#: Service names when OTEL_SERVICE_NAME is unset: GIE's EPP default, and the gateway's own.
SERVICE_EPP = "llm-d-inference-scheduler/epp"
SERVICE_GATEWAY = "kvgate/gateway"

#: Attributes of the request span, for docs/observability.md and the tests.
REQUEST_ATTRIBUTES = (
    "kvgate.door",
    "url.path",
    "gen_ai.request.id",
    "gen_ai.request.model",
    "target_model",  # GIE's name on its orchestration span
    "request_prio",  # GIE's name: the InferenceObjective's priority
    "kvgate.fairness_id",
    "kvgate.stream",
    "kvgate.scheduling.profile",
    "kvgate.endpoint",
    "kvgate.score.total",  # the served endpoint's weighted total; kvgate.score.<scorer> each
    "kvgate.scores",  # JSON {endpoint: {"total": t, scorer: s}} of the primary profile
    "kvgate.queue_wait_ms",
    "kvgate.ttft_ms",
    "kvgate.attempts",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "kvgate.cached_tokens",
    "http.response.status_code",
    "error.type",
)

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_EXPORTERS = ("console", "otlp", "none")


class TracingError(KvgateError):
    """A tracing setting cannot be honoured; the message names the variable and what it takes."""


class RequestTracer(Protocol):
    """What RequestControl calls when tracing is on (its ``tracer``; None when off).

    Invariants: ``start_attempt`` and ``end_attempt`` alternate per request (RequestControl
    guarantees it), ``finish`` runs once per request and ends every span it opened.
    """

    def start_attempt(self, ctx: RequestContext, endpoint: Endpoint) -> Mapping[str, str]:
        """Open the attempt's span; returns the trace-context headers for the model server."""
        ...

    def end_attempt(self, ctx: RequestContext, info: ResponseInfo) -> None: ...

    def finish(self, ctx: RequestContext) -> None: ...


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """The tracing configuration read from the environment (see the module docstring)."""

    service_name: str
    exporters: tuple[str, ...]  # subset of _EXPORTERS, in the order given
    sampler: str  # one of _SAMPLERS
    ratio: float  # the ratio for the *traceidratio samplers
    insecure: bool  # plaintext gRPC to the OTLP endpoint


def settings_from_env(environ: Mapping[str, str], default_service_name: str) -> TracingSettings:
    """Read and check the OTEL_* variables (TracingError naming the first one that is wrong)."""
    service = environ.get("OTEL_SERVICE_NAME") or default_service_name
    raw_exporters = environ.get("OTEL_TRACES_EXPORTER", "console")
    exporters = tuple(e.strip() for e in raw_exporters.split(",") if e.strip())
    for name in exporters:
        if name not in _EXPORTERS:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} "
                f"(kvgate has: {', '.join(_EXPORTERS)})"
            )
    if "otlp" in exporters:
        for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(var)
            if protocol is not None and protocol != "grpc":
                raise TracingError(
                    f"{var}: kvgate exports OTLP over gRPC only (as GIE), got {protocol!r}; "
                    "set it to grpc or unset it"
                )
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio").strip()
    if sampler not in _SAMPLERS:
        raise TracingError(
            f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r} (kvgate has: {', '.join(_SAMPLERS)})"
        )
    ratio = 0.1
    raw_arg = environ.get("OTEL_TRACES_SAMPLER_ARG")
    if raw_arg is not None and sampler.endswith("traceidratio"):
        try:
            ratio = float(raw_arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingError(
                f"OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0 and 1, got {raw_arg!r}"
            )
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"
    )
    raw_insecure = environ.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or environ.get(
        "OTEL_EXPORTER_OTLP_INSECURE"
    )
    if raw_insecure is not None:
        if raw_insecure.lower() not in ("true", "false"):
            raise TracingError(
                f"OTEL_EXPORTER_OTLP_INSECURE: expected true or false, got {raw_insecure!r}"
            )
        insecure = raw_insecure.lower() == "true"
    else:
        insecure = not endpoint.startswith("https://")
    return TracingSettings(service, exporters, sampler, ratio, insecure)


def _sampler(settings: TracingSettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    base = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(settings.ratio),
    }
    if settings.sampler.startswith("parentbased_"):
        return sampling.ParentBased(base[settings.sampler.removeprefix("parentbased_")])
    return base[settings.sampler]


def build_provider(settings: TracingSettings) -> TracerProvider:
    """A TracerProvider with the sampler, resource and exporters ``settings`` name."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise TracingError(
            f"--tracing: OpenTelemetry is not installed ({exc.name}); install kvgate[tracing]"
        ) from exc
    from kvgate import __version__

    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": __version__}
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(settings))
    for name in settings.exporters:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise TracingError(
                    "OTEL_TRACES_EXPORTER: otlp needs opentelemetry-exporter-otlp-proto-grpc; "
                    "install kvgate[tracing]"
                ) from exc
            exporter = OTLPSpanExporter(insecure=settings.insecure)
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class _Spans:
    """The spans of one request, kept on its RequestContext (``ctx.trace``)."""

    __slots__ = ("attempt", "request")

    def __init__(self, request: Span) -> None:
        self.request = request
        self.attempt: Span | None = None


class OtelRequestTracer:
    """:class:`RequestTracer` over an OpenTelemetry TracerProvider (the SDK's, or a test's)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()

    def _spans(self, ctx: RequestContext) -> _Spans:
        spans = ctx.trace
        if isinstance(spans, _Spans):
            return spans
        from opentelemetry.trace import SpanKind

        # the span starts when the request arrived: ctx.started is perf_counter time
        start_ns = time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9)
        request = ctx.request
        parent = self._propagator.extract(request.headers) if request is not None else None
        span = self.tracer.start_span(
            REQUEST_SPAN, context=parent, kind=SpanKind.SERVER, start_time=start_ns
        )
        spans = ctx.trace = _Spans(span)
        return spans

    def start_attempt(self, ctx: RequestContext, endpoint: Endpoint) -> dict[str, str]:
        from opentelemetry.trace import SpanKind, set_span_in_context

        spans = self._spans(ctx)
        parent = set_span_in_context(spans.request)
        attempt = self.tracer.start_span(ATTEMPT_SPAN, context=parent, kind=SpanKind.CLIENT)
        if attempt.is_recording():
            attempt.set_attributes(
                {
                    "kvgate.endpoint": endpoint.name,
                    "kvgate.attempt": ctx.attempts,
                    "server.address": endpoint.address,
                    "server.port": endpoint.port,
                    "url.path": ctx.path,
                }
            )
        spans.attempt = attempt
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=set_span_in_context(attempt))
        return headers

    def end_attempt(self, ctx: RequestContext, info: ResponseInfo) -> None:
        spans = ctx.trace
        if not isinstance(spans, _Spans) or spans.attempt is None:
            return
        attempt, spans.attempt = spans.attempt, None
        if attempt.is_recording():
            if info.status:
                attempt.set_attribute("http.response.status_code", info.status)
            if info.error is not None:
                from opentelemetry.trace import Status, StatusCode

                attempt.set_attribute("error.type", info.error)
                attempt.set_status(Status(StatusCode.ERROR, info.error))
        attempt.end()

    def finish(self, ctx: RequestContext) -> None:
        spans = self._spans(ctx)
        if spans.attempt is not None:  # RequestControl ends attempts first; be safe anyway
            spans.attempt.end()
            spans.attempt = None
        span = spans.request
        if span.is_recording():
            span.set_attributes(_request_attributes(ctx))
            if ctx.status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, ctx.error or str(ctx.status)))
        span.end()


def _request_attributes(ctx: RequestContext) -> dict[str, Any]:
    """The request span's attributes (:data:`REQUEST_ATTRIBUTES`); None values left out."""
    from kvgate.requestcontrol.reqlog import scores_of

    request = ctx.request
    out: dict[str, Any] = {
        "kvgate.door": ctx.door,
        "url.path": ctx.path,
        "http.response.status_code": ctx.status,
        "kvgate.attempts": ctx.attempts,
        "kvgate.stream": ctx.stream,
        "request_prio": ctx.flow_priority,
    }
    if ctx.model:
        out["gen_ai.request.model"] = ctx.model
    if request is not None:
        out["gen_ai.request.id"] = request.request_id
        out["target_model"] = request.effective_model
    if ctx.fairness_id:
        out["kvgate.fairness_id"] = ctx.fairness_id
    if ctx.endpoint is not None:
        out["kvgate.endpoint"] = ctx.endpoint.name
    result = ctx.result
    if result is not None:
        out["kvgate.scheduling.profile"] = result.primary_profile_name
        scores = scores_of(result)
        if scores:
            out["kvgate.scores"] = json.dumps(scores, sort_keys=True)
            served = ctx.endpoint.name if ctx.endpoint is not None else result.target.name
            for scorer, value in scores.get(served, {}).items():
                out[f"kvgate.score.{scorer}"] = value
    optional = {
        "kvgate.queue_wait_ms": None if ctx.queue_wait_s is None else ctx.queue_wait_s * 1e3,
        "kvgate.ttft_ms": None if ctx.ttft_s is None or not ctx.stream else ctx.ttft_s * 1e3,
        "gen_ai.usage.input_tokens": ctx.prompt_tokens,
        "gen_ai.usage.output_tokens": ctx.completion_tokens,
        "kvgate.cached_tokens": ctx.cached_tokens,
        "error.type": ctx.error,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


# --- the process's tracer ------------------------------------------------------------------

_installed: RequestTracer | None = None


def install(tracer: RequestTracer | None) -> None:
    """Make ``tracer`` the one every RequestControl built from now on uses (None: off)."""
    global _installed
    _installed = tracer


def installed() -> RequestTracer | None:
    """The tracer set by :func:`install` (None unless ``--tracing`` is on)."""
    return _installed


def setup(default_service_name: str, environ: Mapping[str, str] | None = None) -> OtelRequestTracer:
    """Read the environment, build the provider and install its tracer (``--tracing``)."""
    settings = settings_from_env(os.environ if environ is None else environ, default_service_name)
    tracer = OtelRequestTracer(build_provider(settings))
    install(tracer)
    return tracer


def shutdown() -> None:
    """Export what is buffered and stop the installed tracer's provider (at process exit)."""
    tracer = _installed
    install(None)
    if isinstance(tracer, OtelRequestTracer):
        tracer.provider.shutdown()
