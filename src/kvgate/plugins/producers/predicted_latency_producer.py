"""``predicted-latency-producer``: predicted TTFT and TPOT per candidate, trained in-process.

* Behaviour: before scheduling, for every candidate, the features of
  :mod:`kvgate.latency.features` (prompt tokens from ``TokenizedPrompt``, the prefix the
  endpoint holds from ``PrefixCacheMatchInfo``, kvgate's in-flight requests and tokens from
  ``InFlightLoad``, the scraped queue, batch and KV utilization) are priced by
  :class:`kvgate.latency.LatencyPredictor` and published as ``{endpoint:
  LatencyPredictionInfo}`` under ``LatencyPredictionInfoKey/<name>`` with the headroom against
  the request's ``x-slo-ttft-ms`` / ``x-slo-tpot-ms`` (``SLO·sloBufferFactor - predicted`` for
  TPOT, as llm-d; an endpoint's TPOT SLO is the smallest of the request's and those of the
  requests kvgate has running there, so a new request cannot push them past theirs). An SLO
  the request does not give counts as met (``*_valid``) while its headroom stays ``0 -
  predicted``; llm-d counts it as missed, which made a request with a TPOT SLO only invalid
  everywhere. Nothing
  is published while the predictor is not ready (``minSamples``), so consumers fall back.
* Training: every finished request (``RequestControl.on_finish`` calls
  :meth:`PredictedLatencyProducer.request_finished`) that succeeded in one attempt trains the
  models with the features its endpoint had when it was picked. ``streamingMode: true``:
  streamed requests only; TTFT = first byte - dispatch, TPOT = (end - first byte) /
  (completion tokens - 1). ``streamingMode: false`` (llm-d's default): TTFT is trained on the
  end-to-end latency and TPOT is neutralized (headroom 0, valid).
* Parameters, llm-d's: ``sloBufferFactor`` (> 0, 1), ``contextTTL`` (duration, 5m: a request
  that took longer is not trained on), ``streamingMode`` (false), ``endpointRoleLabel`` (label
  key; TPOT is neutralized on endpoints whose value is ``prefill``), ``predictInProduce``
  (true; false = train only), ``samplingMean`` (1000) and
  ``maxDecodeTokenSamplesForPrediction`` (0): kvgate trains TPOT on each request's mean and
  samples no tokens, so other values are refused. kvgate's: ``latencyProfile`` (a
  calibrated simulator profile, by name or JSON path, to start from; predictions are then
  used from the first request), ``minSamples`` (>= 1, 20), ``forgettingFactor`` ((0, 1],
  0.999).
* **Difference from llm-d:** llm-d trains XGBoost models in sidecars over HTTP; kvgate fits
  two recursive-least-squares models in the picker's process (docs/latency.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from kvgate.errors import PluginParameterError
from kvgate.latency import (
    LATENCY_PREDICTION_INFO,
    EndpointLoad,
    LatencyPredictionInfo,
    LatencyPredictor,
    load_prior,
    parse_slo,
)
from kvgate.latency.slo import LatencySLO
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.approx_prefix_cache_producer import TYPE as APPROX_PRODUCER
from kvgate.plugins.scorers._duration import get_duration_s
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

#: One DEBUG line per trained request: the prediction made for the picked endpoint (before
#: this sample trained the model, so out of sample) beside what was observed.
sample_log = logging.getLogger("kvgate.latency.samples")

TYPE = "predicted-latency-producer"
DEFAULT_PRODUCER_FOR = (LATENCY_PREDICTION_INFO,)

_LOADS = "kvgate.predicted-latency.loads"  # Request.extra: {producer name: {endpoint: load}}
_SLO = "kvgate.predicted-latency.slo"  # Request.extra: {producer name: LatencySLO}
_RUNNING = "kvgate.predicted-latency.running"  # Request.extra: {producer name: endpoint name}


class FinishedRequest(Protocol):
    """What training reads of a finished request (RequestControl's RequestContext)."""

    request: Request | None
    endpoint: Endpoint | None
    attempts: int
    status: int
    error: str | None
    stream: bool
    ttft_s: float | None
    queue_wait_s: float | None
    duration_s: float | None
    completion_tokens: int | None


class PredictedLatencyProducer:
    """Producer + Consumer + PreRequest + ResponseComplete + EndpointListener, and the
    ``request_finished`` observer RequestControl registers on ``on_finish``."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        predictor: LatencyPredictor,
        *,
        slo_buffer_factor: float = 1.0,
        context_ttl_s: float = 300.0,
        streaming_mode: bool = False,
        endpoint_role_label: str = "",
        predict_in_produce: bool = True,
        prefix_producer: str = APPROX_PRODUCER,
        inflight_producer: str = "inflight-load-producer",
    ) -> None:
        self.name = name
        self.predictor = predictor
        self.slo_buffer_factor = slo_buffer_factor
        self.context_ttl_s = context_ttl_s
        self.streaming_mode = streaming_mode
        self.endpoint_role_label = endpoint_role_label
        self.predict_in_produce = predict_in_produce
        self.key = DataKey(LATENCY_PREDICTION_INFO, name)
        self.tokens_key = DataKey(data.TOKENIZED_PROMPT, "token-producer")
        self.prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_producer)
        self.inflight_key = DataKey(data.IN_FLIGHT_LOAD, inflight_producer)
        # endpoint -> {request id: TPOT SLO (ms)} of requests kvgate has running there
        self._running_tpot_slo: dict[str, dict[str, float]] = {}
        self.trained = 0  # requests trained on
        self.skipped = 0  # finished requests not trained on (failed, retried, too slow, ...)

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.tokens_key, self.prefix_key, self.inflight_key)

    # --- decision time -------------------------------------------------------------------

    def loads(self, request: Request, endpoints: Sequence[Endpoint]) -> dict[str, EndpointLoad]:
        """Each candidate's features, from the producers this one consumes and the metrics."""
        prompt = data.tokenized(request)
        prompt_tokens = prompt.num_tokens if prompt is not None else 0
        matches: Mapping[str, PrefixCacheMatchInfo] = (
            data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo) or {}
        )
        inflight: Mapping[str, InFlightLoad] = (
            data.per_endpoint(request, self.inflight_key, InFlightLoad) or {}
        )
        out: dict[str, EndpointLoad] = {}
        for e in endpoints:
            name = e.name
            match = matches.get(name)
            cached = (
                min(match.cached_block_count * match.block_size_tokens, prompt_tokens)
                if match is not None
                else 0
            )
            load = inflight.get(name)
            m = e.metrics
            out[name] = EndpointLoad(
                prompt_tokens,
                cached,
                load.requests if load is not None else 0,
                load.tokens if load is not None else 0,
                m.waiting_queue_size,
                m.running_requests_size,
                m.kv_cache_usage_percent,
            )
        return out

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        loads = self.loads(request, endpoints)
        slo = parse_slo(request.headers)
        request.extra.setdefault(_LOADS, {})[self.name] = loads
        request.extra.setdefault(_SLO, {})[self.name] = slo
        if not self.predict_in_produce or not self.predictor.ready:
            return
        ttft_slo = slo.ttft_ms
        tpot_slo = slo.tpot_ms * self.slo_buffer_factor
        running_slos = self._running_tpot_slo
        role_label = self.endpoint_role_label
        predictions = self.predictor.predict_all(list(loads.values()))
        infos: dict[str, LatencyPredictionInfo] = {}
        for e, (ttft, tpot) in zip(endpoints, predictions, strict=True):
            name = e.name
            if not self.streaming_mode or (role_label and e.labels.get(role_label) == "prefill"):
                tpot_headroom, tpot_valid = 0.0, True  # neutralized, as llm-d
            else:
                endpoint_slo = tpot_slo
                running = running_slos.get(name) if running_slos else None
                if running and endpoint_slo > 0.0:
                    endpoint_slo = min(endpoint_slo, min(running.values()) * self.slo_buffer_factor)
                tpot_headroom = endpoint_slo - tpot
                tpot_valid = endpoint_slo <= 0.0 or tpot < endpoint_slo
            load = loads[name]
            infos[name] = LatencyPredictionInfo(
                ttft,
                tpot,
                ttft_slo - ttft,
                tpot_headroom,
                ttft_slo <= 0.0 or ttft < ttft_slo,
                tpot_valid,
                load.inflight_requests,
                load,
            )
        data.put(request, self.key, infos)

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        slos = request.extra.get(_SLO)
        slo = slos.get(self.name) if isinstance(slos, dict) else None
        if isinstance(slo, LatencySLO) and slo.tpot_ms > 0.0:
            target = result.target.name
            self._running_tpot_slo.setdefault(target, {})[request.request_id] = slo.tpot_ms
            request.extra.setdefault(_RUNNING, {})[self.name] = target

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        running = request.extra.get(_RUNNING)
        target = running.pop(self.name, None) if isinstance(running, dict) else None
        if target is None:
            return
        slos = self._running_tpot_slo.get(target)
        if slos is not None:
            slos.pop(request.request_id, None)
            if not slos:
                del self._running_tpot_slo[target]

    def endpoints_removed(self, names: Sequence[str]) -> None:
        for name in names:
            self._running_tpot_slo.pop(name, None)

    # --- training --------------------------------------------------------------------------

    def request_finished(self, ctx: FinishedRequest) -> None:
        """Train on one finished request (see the module docstring); cheap, never raises
        on a request it cannot use."""
        sample = self.observation(ctx)
        if sample is None:
            self.skipped += 1
            return
        load, ttft_ms, tpot_ms = sample
        if sample_log.isEnabledFor(logging.DEBUG) and ctx.request is not None:
            self._log_sample(ctx.request, ctx.endpoint, ttft_ms, tpot_ms)
        self.predictor.observe(load, ttft_ms, tpot_ms)
        self.trained += 1

    def _log_sample(
        self, request: Request, endpoint: Endpoint | None, ttft_ms: float, tpot_ms: float | None
    ) -> None:
        infos = data.per_endpoint(request, self.key, LatencyPredictionInfo)
        info = infos.get(endpoint.name) if infos is not None and endpoint is not None else None
        fields = {
            "request_id": request.request_id,
            "endpoint": endpoint.name if endpoint is not None else None,
            "samples_before": self.predictor.num_samples,
            "predicted_ttft_ms": None if info is None else round(info.ttft_ms, 3),
            "observed_ttft_ms": round(ttft_ms, 3),
            "predicted_tpot_ms": None if info is None else round(info.tpot_ms, 3),
            "observed_tpot_ms": None if tpot_ms is None else round(tpot_ms, 3),
        }
        sample_log.debug("latency sample", extra={"fields": fields})

    def observation(self, ctx: FinishedRequest) -> tuple[EndpointLoad, float, float | None] | None:
        """``(features at decision time, TTFT ms, TPOT ms or None)``, or None when the
        request cannot be trained on."""
        request, endpoint = ctx.request, ctx.endpoint
        if request is None or endpoint is None or ctx.duration_s is None:
            return None
        if ctx.error is not None or not 200 <= ctx.status < 300 or ctx.attempts != 1:
            return None
        if ctx.duration_s > self.context_ttl_s:
            return None
        by_producer = request.extra.get(_LOADS)
        loads = by_producer.get(self.name) if isinstance(by_producer, dict) else None
        load = loads.get(endpoint.name) if isinstance(loads, dict) else None
        if not isinstance(load, EndpointLoad):
            return None
        waited = ctx.queue_wait_s or 0.0
        if not self.streaming_mode:
            return load, (ctx.duration_s - waited) * 1e3, None
        if not ctx.stream or ctx.ttft_s is None:
            return None
        ttft_ms = (ctx.ttft_s - waited) * 1e3
        tokens = ctx.completion_tokens
        tpot_ms = None
        if tokens is not None and tokens >= 2:
            tpot_ms = (ctx.duration_s - ctx.ttft_s) * 1e3 / (tokens - 1)
        return load, ttft_ms, tpot_ms


def create(name: str, params: Params, ctx: PluginContext) -> PredictedLatencyProducer:
    if params.get_float("samplingMean", 1000.0) != 1000.0:
        raise PluginParameterError(
            "samplingMean",
            "kvgate trains TPOT on each request's mean and samples no tokens; remove it",
        )
    if params.get_int("maxDecodeTokenSamplesForPrediction", 0) != 0:
        raise PluginParameterError(
            "maxDecodeTokenSamplesForPrediction",
            "kvgate samples no decode tokens for prediction; expected 0 or remove it",
        )
    buffer = params.get_float("sloBufferFactor", 1.0, minimum=0.0)
    if buffer <= 0.0:
        raise PluginParameterError("sloBufferFactor", f"expected a number > 0, got {buffer}")
    forgetting = params.get_float("forgettingFactor", 0.999, minimum=0.0, maximum=1.0)
    if forgetting <= 0.0:
        raise PluginParameterError("forgettingFactor", "expected a number in (0, 1], got 0")
    profile = params.get_str("latencyProfile", "")
    prior = None
    if profile:
        try:
            prior = load_prior(profile)
        except ValueError as exc:
            raise PluginParameterError("latencyProfile", str(exc)) from exc
    predictor = LatencyPredictor(
        prior,
        forgetting=forgetting,
        min_samples=params.get_int("minSamples", 20, minimum=1),
    )
    return PredictedLatencyProducer(
        name,
        predictor,
        slo_buffer_factor=buffer,
        context_ttl_s=get_duration_s(params, "contextTTL", "5m"),
        streaming_mode=params.get_bool("streamingMode", False),
        endpoint_role_label=params.get_str("endpointRoleLabel", ""),
        predict_in_produce=params.get_bool("predictInProduce", True),
    )
