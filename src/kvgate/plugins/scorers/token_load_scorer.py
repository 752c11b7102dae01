"""``token-load-scorer``: prefer endpoints with fewer tokens in flight.

* Formula: ``score = 1 − min(1, tokens / queueThresholdTokens)`` where ``tokens`` is the
  endpoint's in-flight token count from ``InFlightLoad`` plus the tokens this request would
  add there, ``UncachedRequestTokens`` (its prompt less the prefix the endpoint holds, as
  llm-d-router since #1319), from the same producer (0 tokens → 1.0; the threshold or more →
  0.0; an endpoint the producer published nothing for scores 1.0, no observed load).
* Parameters (llm-d's): ``queueThresholdTokens`` (int > 0, default 4,194,304 = 128 requests
  of 32k tokens); ``inFlightLoadProducerName`` (string, default ``inflight-load-producer``,
  which is added when not configured).
* Inputs: ``InFlightLoad/<producer>``. State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "token-load-scorer"
DEFAULT_INFLIGHT_PRODUCER = "inflight-load-producer"


class TokenLoadScorer:
    """Scores by in-flight tokens, linearly down to 0 at the threshold."""

    type_name = TYPE

    def __init__(self, name: str, queue_threshold_tokens: int, producer_name: str) -> None:
        self.name = name
        self.queue_threshold_tokens = queue_threshold_tokens
        self.key = DataKey(data.IN_FLIGHT_LOAD, producer_name)
        self.uncached_key = DataKey(data.UNCACHED_REQUEST_TOKENS, producer_name)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        loads = data.per_endpoint(request, self.key, InFlightLoad) or {}
        uncached = data.per_endpoint(request, self.uncached_key, int) or {}
        out: dict[str, float] = {}
        for e in endpoints:
            load = loads.get(e.name)
            tokens = (load.tokens if load is not None else 0) + uncached.get(e.name, 0)
            out[e.name] = 1.0 - min(1.0, tokens / self.queue_threshold_tokens)
        return out


def create(name: str, params: Params, ctx: PluginContext) -> TokenLoadScorer:
    return TokenLoadScorer(
        name,
        params.get_int("queueThresholdTokens", 4194304, minimum=1),
        params.get_str("inFlightLoadProducerName", "") or DEFAULT_INFLIGHT_PRODUCER,
    )
