"""``latency-scorer``: score candidates by predicted latency headroom against the request's SLOs.

* Inputs: ``LatencyPredictionInfo`` from ``predicted-latency-producer`` (added when not
  configured) and, for the fallback, ``PrefixCacheMatchInfo`` and the scraped metrics.
* Behaviour (llm-d's): an endpoint *meets* the request's SLOs when its predictions are
  within both (an SLO not given counts as met). With SLOs, the endpoints that meet them are
  scored and the others get 0. When none does, or the request has no SLO (headroom
  ``0 - predicted``), idle endpoints (nothing in flight from kvgate) are preferred; else only
  the least severe group is scored: TPOT missed only, then TTFT missed only, then both.
  Within the scored group, ``|headroom|`` per dimension is min-max normalized and blended
  ``(ttftWeight·t + tpotWeight·p) / (ttftWeight + tpotWeight)``; a dimension whose values are
  all equal gets weight 0. ``headroomSelectionStrategy: least`` (default) prefers the
  endpoint closest to its SLO (bin packing, keeping idle capacity for later), ``most`` the one
  with the most headroom; missed SLOs always use ``least`` (the smallest deficit, i.e. the
  lowest predicted latency without SLOs). Scores are llm-d's integer weights out of 100,
  ``(⌊100·x⌋ + 1) / 100`` capped at 1: a scored endpoint keeps a chance under
  ``weighted-random-picker``.
* Fallback, while nothing is predicted (too few samples, ``predictInProduce: false``):
  ``c = (compositeKVWeight·(1 - kv) + compositeQueueWeight·(maxQ - q)/maxQ +
  compositePrefixWeight·prefix ratio) / Σ weights``, rounded to hundredths as llm-d's weight
  ``round(100·c) / 100``.
* Parameters: ``ttftWeight`` (>= 0, 0.8), ``tpotWeight`` (>= 0, 0.2),
  ``headroomSelectionStrategy`` (``least`` | ``most``), ``compositeKVWeight``,
  ``compositeQueueWeight``, ``compositePrefixWeight`` (>= 0, 1 each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kvgate.errors import PluginParameterError
from kvgate.latency import LATENCY_PREDICTION_INFO, LatencyPredictionInfo, parse_slo
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.approx_prefix_cache_producer import TYPE as APPROX_PRODUCER
from kvgate.plugins.producers.predicted_latency_producer import TYPE as PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "latency-scorer"
STRATEGIES = ("least", "most")

_EPS = 1e-9
_LEVELS = 100  # llm-d's wMax: scores are integer weights out of 100, never 0 when scored


class LatencyScorer:
    """See the module docstring."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        *,
        ttft_weight: float = 0.8,
        tpot_weight: float = 0.2,
        strategy: str = "least",
        composite_kv_weight: float = 1.0,
        composite_queue_weight: float = 1.0,
        composite_prefix_weight: float = 1.0,
        producer: str = PRODUCER,
        prefix_producer: str = APPROX_PRODUCER,
    ) -> None:
        self.name = name
        self.ttft_weight = ttft_weight
        self.tpot_weight = tpot_weight
        self.strategy = strategy
        self.composite = (composite_kv_weight, composite_queue_weight, composite_prefix_weight)
        self.key = DataKey(LATENCY_PREDICTION_INFO, producer)
        self.prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_producer)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.key, self.prefix_key)

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        infos = data.per_endpoint(request, self.key, LatencyPredictionInfo)
        if not infos:
            return self.composite_scores(request, endpoints)
        scored = [(e, infos[e.name]) for e in endpoints if e.name in infos]
        scores = dict.fromkeys((e.name for e in endpoints), 0.0)
        if parse_slo(request.headers).any:
            meeting = [(e, i) for e, i in scored if i.valid]
            if meeting:
                self._score_group(meeting, scores, self.strategy)
                return scores
        idle = [(e, i) for e, i in scored if i.dispatched_requests == 0]
        if idle:
            self._score_group(idle, scores, "least")
            return scores
        tpot_only = [(e, i) for e, i in scored if i.ttft_valid and not i.tpot_valid]
        ttft_only = [(e, i) for e, i in scored if i.tpot_valid and not i.ttft_valid]
        for group in (tpot_only, ttft_only):
            if group:
                self._score_group(group, scores, "least")
                return scores
        self._score_group(scored, scores, "least")
        return scores

    def _score_group(
        self,
        group: Sequence[tuple[Endpoint, LatencyPredictionInfo]],
        scores: dict[str, float],
        strategy: str,
    ) -> None:
        ttft = [abs(i.ttft_headroom_ms) for _, i in group]
        tpot = [abs(i.tpot_headroom_ms) for _, i in group]
        t_min, p_min = min(ttft), min(tpot)
        t_range, p_range = max(ttft) - t_min, max(tpot) - p_min
        total = self.ttft_weight + self.tpot_weight
        alpha, beta = (self.ttft_weight / total, self.tpot_weight / total) if total > 0 else (1, 0)
        if t_range <= _EPS < p_range:
            alpha, beta = 0.0, 1.0
        elif p_range <= _EPS < t_range:
            alpha, beta = 1.0, 0.0
        for (e, _), t, p in zip(group, ttft, tpot, strict=True):
            n_t = (t - t_min) / t_range if t_range > _EPS else 0.5
            n_p = (p - p_min) / p_range if p_range > _EPS else 0.5
            combined = alpha * n_t + beta * n_p  # 0 = closest to the SLO boundary
            x = combined if strategy == "most" else 1.0 - combined
            # int() truncates toward 0 as Go's conversion; x = 1 gives 101/100, capped
            scores[e.name] = min(1.0, (int(x * _LEVELS) + 1) / _LEVELS)

    def composite_scores(self, request: Request, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        """llm-d's fallback while no predictions exist (see the module docstring)."""
        w_kv, w_q, w_prefix = self.composite
        total = w_kv + w_q + w_prefix
        if total <= 0:
            w_kv, w_q, w_prefix, total = 1.0, 0.0, 0.0, 1.0
        matches = data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo) or {}
        max_q = max((e.metrics.waiting_queue_size for e in endpoints), default=0)
        out: dict[str, float] = {}
        for e in endpoints:
            q = e.metrics.waiting_queue_size
            rel_queue = (max_q - q) / max_q if max_q > 0 else 1.0
            match = matches.get(e.name)
            prefix = match.ratio if match is not None else 0.0
            kv_free = 1.0 - e.metrics.kv_cache_usage_percent
            composite = (w_kv * kv_free + w_q * rel_queue + w_prefix * prefix) / total
            out[e.name] = math.floor(composite * _LEVELS + 0.5) / _LEVELS  # Go's math.Round
        return out


def create(name: str, params: Params, ctx: PluginContext) -> LatencyScorer:
    strategy = params.get_str("headroomSelectionStrategy", "least")
    if strategy not in STRATEGIES:
        raise PluginParameterError(
            "headroomSelectionStrategy", f"expected one of least, most, got {strategy!r}"
        )
    return LatencyScorer(
        name,
        ttft_weight=params.get_float("ttftWeight", 0.8, minimum=0.0),
        tpot_weight=params.get_float("tpotWeight", 0.2, minimum=0.0),
        strategy=strategy,
        composite_kv_weight=params.get_float("compositeKVWeight", 1.0, minimum=0.0),
        composite_queue_weight=params.get_float("compositeQueueWeight", 1.0, minimum=0.0),
        composite_prefix_weight=params.get_float("compositePrefixWeight", 1.0, minimum=0.0),
    )
