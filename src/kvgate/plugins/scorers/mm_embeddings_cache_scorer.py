"""``mm-embeddings-cache-scorer`` (llm-d): prefer endpoints that already encoded the request's
images, videos and audio.

* Parameters (llm-d's): ``producerName`` (string, default: the default producer,
  ``mm-embeddings-cache-producer``) — which ``mm-embeddings-cache-producer`` to read; when
  none is configured the default one is added, as llm-d does.
* Score: ``matched items / distinct request items`` from the producer's
  ``EncoderCacheMatchInfo`` for each endpoint, in [0, 1]; 0 for an endpoint without match
  data and for every endpoint of a text-only request.
* State: none (the producer owns the cache view).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.producers.mm_embeddings_cache_producer import TYPE as DEFAULT_PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, EncoderCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "mm-embeddings-cache-scorer"


class MMEmbeddingsCacheScorer:
    """Scorer + Consumer of ``MultiModalEncoderCacheMatchInfoKey``."""

    type_name = TYPE

    def __init__(self, name: str, producer_name: str = "") -> None:
        self.name = name
        self.key = DataKey(data.ENCODER_CACHE_MATCH_INFO, producer_name or DEFAULT_PRODUCER)

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        produced = data.per_endpoint(request, self.key, EncoderCacheMatchInfo)
        if not produced:
            return dict.fromkeys((e.name for e in endpoints), 0.0)
        out: dict[str, float] = {}
        for e in endpoints:
            info = produced.get(e.name)
            out[e.name] = info.ratio if isinstance(info, EncoderCacheMatchInfo) else 0.0
        return out


def create(name: str, params: Params, ctx: PluginContext) -> MMEmbeddingsCacheScorer:
    return MMEmbeddingsCacheScorer(name, params.get_str("producerName", ""))
