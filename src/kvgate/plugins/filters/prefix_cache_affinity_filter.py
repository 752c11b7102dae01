"""``prefix-cache-affinity-filter``: narrow the candidates to the "sticky" ones that hold the prompt.

* Behaviour (llm-d's, in order): with at most one candidate or ``affinityThreshold <= 0``,
  keep all; with probability ``explorationProbability`` keep all (exploration); sticky =
  candidates whose prefix ratio ``match_blocks / total_blocks`` is ``>= affinityThreshold``;
  none sticky → keep all; TTFT load gate: when ``maxTTFTPenaltyMs > 0`` and some candidates are
  not sticky, estimate each one's TTFT as ``inFlightTokens / peakPrefillThroughput · 1000`` ms
  and keep all if the best sticky one is slower than the best other one by more than
  ``maxTTFTPenaltyMs``; in-flight tokens gate (the generation of llm-d-router#1024 that the
  optimized-baseline guide still configures): when ``maxTokensInFlightPenalty > 0`` and some
  candidates are not sticky, keep all if the least-loaded sticky one has more than that many
  in-flight tokens over the least-loaded other one; else keep the sticky ones.
* Parameters: ``affinityThreshold`` (<= 1, default 0.80), ``explorationProbability`` ([0, 1],
  0), ``maxTTFTPenaltyMs`` (>= 0, 18000; 0 = always stick), ``ttftSource``
  (``prefillThroughput``, the default; ``latencyPredictor``: the gate compares the TTFTs
  ``predicted-latency-producer`` predicts, and is skipped while it publishes none),
  ``peakPrefillThroughput`` (tokens/s > 0, 15928), ``maxTokensInFlightPenalty`` (tokens
  >= 0, 0 = no gate), ``prefixMatchInfoProducerName``,
  ``inFlightLoadProducerName``, ``latencyPredictionInfoProducerName``.
* Inputs: ``PrefixCacheMatchInfo`` (default producer ``approx-prefix-cache-producer``) and,
  with a gate on, ``InFlightLoad`` (``inflight-load-producer``); both are added when not
  configured. Randomness: the context's RNG only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.errors import PluginParameterError
from kvgate.latency import LATENCY_PREDICTION_INFO, LatencyPredictionInfo
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, RandomSource, Request

TYPE = "prefix-cache-affinity-filter"

TTFT_SOURCES = ("prefillThroughput", "latencyPredictor")


class PrefixCacheAffinityFilter:
    """See the module docstring."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        rng: RandomSource,
        *,
        affinity_threshold: float = 0.80,
        exploration_probability: float = 0.0,
        max_ttft_penalty_ms: float = 18000.0,
        max_tokens_in_flight_penalty: int = 0,
        peak_prefill_throughput: float = 15928.0,
        prefix_producer: str = "approx-prefix-cache-producer",
        inflight_producer: str = "inflight-load-producer",
        latency_producer: str | None = None,
    ) -> None:
        self.name = name
        self.rng = rng
        self.affinity_threshold = affinity_threshold
        self.exploration_probability = exploration_probability
        self.max_ttft_penalty_ms = max_ttft_penalty_ms
        self.max_tokens_in_flight_penalty = max_tokens_in_flight_penalty
        self.peak_prefill_throughput = peak_prefill_throughput
        self.prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_producer)
        self.inflight_key = DataKey(data.IN_FLIGHT_LOAD, inflight_producer)
        # ttftSource latencyPredictor: the gate reads predictions instead of in-flight tokens
        self.latency_key = (
            DataKey(LATENCY_PREDICTION_INFO, latency_producer) if latency_producer else None
        )

    def consumes(self) -> tuple[DataKey, ...]:
        keys = [self.prefix_key]
        if self.max_ttft_penalty_ms > 0:
            keys.append(self.latency_key or self.inflight_key)
        if self.max_tokens_in_flight_penalty > 0 and self.inflight_key not in keys:
            keys.append(self.inflight_key)
        return tuple(keys)

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        if len(endpoints) <= 1 or self.affinity_threshold <= 0:
            return list(endpoints)
        if self.rng.random() < self.exploration_probability:
            return list(endpoints)
        matches = data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo) or {}
        sticky: list[Endpoint] = []
        others: list[Endpoint] = []
        for e in endpoints:
            info = matches.get(e.name)
            ratio = info.ratio if info is not None else 0.0
            (sticky if ratio >= self.affinity_threshold else others).append(e)
        if not sticky:
            return list(endpoints)
        if self.max_ttft_penalty_ms > 0 and others and self.latency_key is not None:
            predicted = data.per_endpoint(request, self.latency_key, LatencyPredictionInfo)
            if predicted:  # none published yet: the gate is skipped, as llm-d
                best_sticky = min(self._predicted_ms(e, predicted) for e in sticky)
                best_other = min(self._predicted_ms(e, predicted) for e in others)
                if best_sticky - best_other > self.max_ttft_penalty_ms:
                    return list(endpoints)
        elif self.max_ttft_penalty_ms > 0 and others:
            loads = data.per_endpoint(request, self.inflight_key, InFlightLoad) or {}
            penalty = self._best_ttft_ms(sticky, loads) - self._best_ttft_ms(others, loads)
            if penalty > self.max_ttft_penalty_ms:
                return list(endpoints)
        if self.max_tokens_in_flight_penalty > 0 and others:
            loads = data.per_endpoint(request, self.inflight_key, InFlightLoad) or {}
            excess = self._fewest_tokens(sticky, loads) - self._fewest_tokens(others, loads)
            if excess > self.max_tokens_in_flight_penalty:
                return list(endpoints)
        return sticky

    @staticmethod
    def _fewest_tokens(endpoints: Sequence[Endpoint], loads: Mapping[str, InFlightLoad]) -> int:
        """The fewest in-flight tokens among ``endpoints``; no load published = 0 tokens."""
        return min((load.tokens if (load := loads.get(e.name)) else 0) for e in endpoints)

    @staticmethod
    def _predicted_ms(endpoint: Endpoint, predicted: Mapping[str, LatencyPredictionInfo]) -> float:
        info = predicted.get(endpoint.name)
        return info.ttft_ms if info is not None else float("inf")

    def _best_ttft_ms(
        self, endpoints: Sequence[Endpoint], loads: Mapping[str, InFlightLoad]
    ) -> float:
        """The lowest estimated TTFT (ms) among ``endpoints``; no load published = 0 tokens."""
        best = float("inf")
        for e in endpoints:
            load = loads.get(e.name)
            tokens = load.tokens if load is not None else 0
            best = min(best, tokens / self.peak_prefill_throughput * 1000.0)
        return best


def create(name: str, params: Params, ctx: PluginContext) -> PrefixCacheAffinityFilter:
    threshold = params.get_float("affinityThreshold", 0.80, maximum=1.0)
    exploration = params.get_float("explorationProbability", 0.0, minimum=0.0, maximum=1.0)
    penalty = params.get_float("maxTTFTPenaltyMs", 18000.0, minimum=0.0)
    source = params.get_str("ttftSource", "prefillThroughput")
    if source not in TTFT_SOURCES:
        raise PluginParameterError(
            "ttftSource", f"expected one of {', '.join(TTFT_SOURCES)}, got {source!r}"
        )
    tokens_penalty = params.get_int("maxTokensInFlightPenalty", 0, minimum=0)
    peak = params.get_float("peakPrefillThroughput", 15928.0, minimum=0.0)
    if source == "prefillThroughput" and penalty > 0 and peak == 0:
        raise PluginParameterError(
            "peakPrefillThroughput", "expected a number > 0 when ttftSource is prefillThroughput"
        )
    latency_producer = params.get_str("latencyPredictionInfoProducerName", "")
    return PrefixCacheAffinityFilter(
        name,
        ctx.rng,
        affinity_threshold=threshold,
        exploration_probability=exploration,
        max_ttft_penalty_ms=penalty,
        max_tokens_in_flight_penalty=tokens_penalty,
        peak_prefill_throughput=peak,
        prefix_producer=params.get_str("prefixMatchInfoProducerName", "")
        or "approx-prefix-cache-producer",
        inflight_producer=params.get_str("inFlightLoadProducerName", "")
        or "inflight-load-producer",
        latency_producer=(latency_producer or "predicted-latency-producer")
        if source == "latencyPredictor"
        else None,
    )
