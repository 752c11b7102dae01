"""``inflight-load-producer``: requests and tokens kvgate has in flight on each endpoint.

Counts what kvgate itself sent: PreRequest adds the request to the first target of every
profile result (decode and prefill alike), ResponseComplete (called exactly once per forwarded
request) takes it off again. The data-preparation step publishes a snapshot
``{endpoint name: InFlightLoad(requests, tokens)}`` under ``InFlightLoad/<name>`` for
``token-load-scorer`` and ``prefix-cache-affinity-filter``, and, as llm-d-router (#1319),
``{endpoint name: tokens}`` under ``UncachedRequestTokens/<name>``: what this request would
add there (below), which ``token-load-scorer`` adds to the in-flight tokens.

* Tokens a request adds on an endpoint: its prompt tokens (from ``TokenizedPrompt``, so this
  producer consumes a ``token-producer``; one is auto-added when none is configured) minus
  the prefix that endpoint already holds per ``PrefixCacheMatchInfo`` of the prefix producer
  named ``prefixMatchInfoProducerName`` (default ``approx-prefix-cache-producer``; optional:
  no discount when that producer is not configured; when it is, this producer runs after
  it), plus, with ``addEstimatedOutputTokens``,
  ``min(round(prompt · outputRatio), max_tokens?, maxEstimatedOutputTokens?)``.
* Parameters (llm-d's): ``addEstimatedOutputTokens`` (bool, false), ``outputRatio`` (float
  >= 0, 1.5), ``maxEstimatedOutputTokens`` (int >= 0, none), ``prefixMatchInfoProducerName``
  (string), ``syncCrossReplicaState`` (bool, true; kvgate runs one picker per pool, so there is
  no other replica to share counts with).
* **Difference from llm-d:** llm-d releases a streaming request's tokens at its first response
  chunk; kvgate's request path reports only completion, so tokens are released then.
* State: per-endpoint counters; an endpoint that leaves the pool is forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.approx_prefix_cache_producer import TYPE as APPROX_PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

TYPE = "inflight-load-producer"
DEFAULT_PRODUCER_FOR = (data.IN_FLIGHT_LOAD,)

_ADDED = "kvgate.inflight-load.added"  # Request.extra: {producer name: [(endpoint, tokens)]}


class InFlightLoadProducer:
    """Producer + PreRequest + ResponseComplete + EndpointListener."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        *,
        prefix_producer: str = APPROX_PRODUCER,
        add_estimated_output_tokens: bool = False,
        output_ratio: float = 1.5,
        max_estimated_output_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.key = DataKey(data.IN_FLIGHT_LOAD, name)
        self.uncached_key = DataKey(data.UNCACHED_REQUEST_TOKENS, name)
        self.tokens_key = DataKey(data.TOKENIZED_PROMPT, "token-producer")
        self.prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_producer)
        self.add_estimated_output_tokens = add_estimated_output_tokens
        self.output_ratio = output_ratio
        self.max_estimated_output_tokens = max_estimated_output_tokens
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key, self.uncached_key)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.tokens_key,)

    def may_consume(self) -> tuple[DataKey, ...]:
        return (self.prefix_key,)

    def load(self, endpoint_name: str) -> InFlightLoad:
        return InFlightLoad(
            self._requests.get(endpoint_name, 0), self._tokens.get(endpoint_name, 0)
        )

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        data.put(request, self.key, {e.name: self.load(e.name) for e in endpoints})
        uncached = {e.name: self.request_tokens(request, e.name) for e in endpoints}
        data.put(request, self.uncached_key, uncached)

    def request_tokens(self, request: Request, endpoint_name: str) -> int:
        """Tokens this request adds on ``endpoint_name`` (see the module docstring)."""
        prompt = data.tokenized(request)
        input_tokens = prompt.num_tokens if prompt is not None else 0
        tokens = input_tokens
        matches = data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo)
        info = matches.get(endpoint_name) if matches is not None else None
        if info is not None and info.block_size_tokens > 0:
            indexed = info.total_blocks * info.block_size_tokens
            cached = int(info.cached_block_count) * info.block_size_tokens
            tail = max(input_tokens - indexed, 0)
            tokens = max(indexed - cached, 0) + tail
        if self.add_estimated_output_tokens and input_tokens > 0:
            tokens += self.estimated_output(request, input_tokens)
        return tokens

    def estimated_output(self, request: Request, input_tokens: int) -> int:
        estimate = round(input_tokens * self.output_ratio)
        body: Mapping[str, object] = request.body or {}
        for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            limit = body.get(field)
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
                estimate = min(estimate, limit)
                break
        if self.max_estimated_output_tokens is not None:
            estimate = min(estimate, self.max_estimated_output_tokens)
        return estimate

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        added: list[tuple[str, int]] = []
        for profile_result in result.profile_results.values():
            if profile_result is None or not profile_result.targets:
                continue
            name = profile_result.targets[0].name
            tokens = self.request_tokens(request, name)
            self._requests[name] = self._requests.get(name, 0) + 1
            self._tokens[name] = self._tokens.get(name, 0) + tokens
            added.append((name, tokens))
        request.extra.setdefault(_ADDED, {})[self.name] = added

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        by_producer = request.extra.get(_ADDED)
        added = by_producer.pop(self.name, None) if isinstance(by_producer, dict) else None
        for name, tokens in added or ():
            if name in self._requests:
                self._requests[name] = max(self._requests[name] - 1, 0)
                self._tokens[name] = max(self._tokens.get(name, 0) - tokens, 0)

    def endpoints_removed(self, names: Sequence[str]) -> None:
        for name in names:
            self._requests.pop(name, None)
            self._tokens.pop(name, None)


def create(name: str, params: Params, ctx: PluginContext) -> InFlightLoadProducer:
    max_output = params.get_int("maxEstimatedOutputTokens", -1, minimum=0)
    params.get_bool("syncCrossReplicaState", True)  # one picker replica: nothing to share
    return InFlightLoadProducer(
        name,
        prefix_producer=params.get_str("prefixMatchInfoProducerName", "") or APPROX_PRODUCER,
        add_estimated_output_tokens=params.get_bool("addEstimatedOutputTokens", False),
        output_ratio=params.get_float("outputRatio", 1.5, minimum=0.0),
        max_estimated_output_tokens=max_output if params.has("maxEstimatedOutputTokens") else None,
    )
