"""``slo-headroom-tier-filter``: keep the endpoints that meet the request's SLOs, mostly.

* Behaviour (llm-d's): the candidates split into those whose predictions meet every SLO the
  request gives and the others (endpoints without a prediction count as the others). When
  both tiers exist, keep the meeting tier, except with probability ``epsilonExploreNeg``
  keep the other one (so an endpoint recovering from overload gets traffic and fresh
  samples); one tier only, or no predictions at all: keep all. A request without SLOs keeps
  all (every endpoint has negative headroom against an SLO of 0).
* Parameters: ``epsilonExploreNeg`` ([0, 1], 0.01). Inputs: ``LatencyPredictionInfo``.
  Randomness: the context's RNG only.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.latency import LATENCY_PREDICTION_INFO, LatencyPredictionInfo, parse_slo
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.predicted_latency_producer import TYPE as PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState, Endpoint, RandomSource, Request

TYPE = "slo-headroom-tier-filter"


class SLOHeadroomTierFilter:
    """See the module docstring."""

    type_name = TYPE

    def __init__(
        self, name: str, rng: RandomSource, *, epsilon: float = 0.01, producer: str = PRODUCER
    ) -> None:
        self.name = name
        self.rng = rng
        self.epsilon = epsilon
        self.key = DataKey(LATENCY_PREDICTION_INFO, producer)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        infos = data.per_endpoint(request, self.key, LatencyPredictionInfo)
        if not infos or not parse_slo(request.headers).any:
            return list(endpoints)
        meeting: list[Endpoint] = []
        others: list[Endpoint] = []
        for e in endpoints:
            info = infos.get(e.name)
            (meeting if info is not None and info.valid else others).append(e)
        if not meeting or not others:
            return list(endpoints)
        return others if self.rng.random() < self.epsilon else meeting


def create(name: str, params: Params, ctx: PluginContext) -> SLOHeadroomTierFilter:
    epsilon = params.get_float("epsilonExploreNeg", 0.01, minimum=0.0, maximum=1.0)
    return SLOHeadroomTierFilter(name, ctx.rng, epsilon=epsilon)
