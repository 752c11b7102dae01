"""``precise-prefix-cache-producer``: each endpoint's prefix match from the engines' KV events.

The data-producer form of ``precise-prefix-cache-scorer``: the same precise index (fed by
vLLM's KV events over ZMQ, :mod:`kvgate.kvcache.index`), the same parameters and defaults
(see :mod:`kvgate.plugins.scorers.precise_prefix_cache_scorer`), but it publishes one
:class:`~kvgate.scheduling.data.PrefixCacheMatchInfo` per candidate under
``PrefixCacheMatchInfoDataKey/<name>`` instead of scoring; pair it with
``prefix-cache-scorer {prefixMatchInfoProducerName: <name>}``.

* Output per candidate: ``match_blocks`` = the tier-weighted longest held prefix (a CPU-tier
  block counts its tier weight, predicted blocks of speculative indexing the GPU weight),
  ``cached_block_count`` = the unweighted leading blocks held, ``total_blocks`` = the prompt's
  full blocks (capped by ``kvBlockIndexConfig.maxPrefixBlocksToMatch``), ``block_size_tokens``.
  The scorer's ratio is then ``min(1, weighted / total)``, the precise scorer's formula.
* Tokens: consumes ``TokenizedPrompt`` (a ``token-producer``; one is added when none is
  configured). As in llm-d, ``indexerConfig.tokenizersPoolConfig`` is rejected: tokenization
  belongs to the token producer. **Difference from llm-d:** when the tokens are the
  ``estimate`` backend's byte packing (which cannot match engine blocks; llm-d then silently
  degrades), kvgate tokenizes the prompt with the model's tokenizer instead.
* Roles beyond Producer, delegated to the index's owner: PreRequest (predicted-cached-tokens
  and speculative indexing), ResponseComplete, EndpointListener, Lifecycle (the ZMQ
  subscriber).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers import precise_prefix_cache_scorer as precise
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

TYPE = "precise-prefix-cache-producer"


class PrecisePrefixCacheProducer:
    """Producer over a :class:`~precise.PrecisePrefixCacheScorer`'s index (not a Scorer)."""

    type_name = TYPE

    def __init__(self, name: str, core: precise.PrecisePrefixCacheScorer) -> None:
        self.name = name
        self.core = core
        self.key = DataKey(data.PREFIX_CACHE_MATCH_INFO, name)
        self.tokens_key = DataKey(data.TOKENIZED_PROMPT, "token-producer")

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.tokens_key,)

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        prompt = data.tokenized(request)
        token_ids = prompt.token_ids if prompt is not None and not prompt.estimated else None
        weighted, found = self.core.match(request, endpoints, token_ids)
        if found is None:
            return
        data.put(
            request,
            self.key,
            {
                e.name: PrefixCacheMatchInfo(
                    weighted.get(e.name, 0.0),
                    found.num_blocks,
                    found.block_size,
                    found.blocks.get(e.name, 0),
                )
                for e in endpoints
            },
        )

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        self.core.pre_request(request, result, headers)

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        self.core.response_complete(request, response, endpoint)

    def endpoints_removed(self, names: Sequence[str]) -> None:
        self.core.endpoints_removed(names)

    async def start(self) -> None:
        await self.core.start()

    async def stop(self) -> None:
        await self.core.stop()


def create(name: str, params: Params, ctx: PluginContext) -> PrecisePrefixCacheProducer:
    indexer = params.raw.get("indexerConfig")
    if isinstance(indexer, dict) and "tokenizersPoolConfig" in indexer:
        raise PluginParameterError(
            "indexerConfig.tokenizersPoolConfig",
            "not supported by the producer; configure a token-producer plugin instead",
        )
    return PrecisePrefixCacheProducer(name, precise.create(name, params, ctx))
