"""precise-prefix-cache-producer: the precise index's matches as PrefixCacheMatchInfo."""

from __future__ import annotations

import time

import pytest

from kvgate.errors import PluginParameterError
from kvgate.kvcache.events import BlockStored, EventBatch
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.plugins.base import Lifecycle, PreRequest, Producer, Scorer
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo, TokenizedPrompt
from kvgate.scheduling.types import CycleState, Endpoint
from plugins.kit import make, request

TYPE = "precise-prefix-cache-producer"
KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, TYPE)
E1, E2 = Endpoint("pod-a", "10.0.0.1", 8000), Endpoint("pod-b", "10.0.0.2", 8000)
BS = 4


def test_publishes_weighted_and_unweighted_blocks_from_the_token_producer() -> None:
    p = make(TYPE, {"tokenProcessorConfig": {"blockSize": BS}})
    assert isinstance(p, Producer | PreRequest | Lifecycle) and not isinstance(p, Scorer)
    ids = list(range(1, 4 * BS + 2))  # 4 full blocks
    stored = BlockStored([11, 12, 13], None, ids[: 3 * BS], BS, medium="GPU")
    cpu = BlockStored([21], None, ids[:BS], BS, medium="CPU")
    p.core.index.apply_batch(E1.hostport, EventBatch(time.time(), [stored]))
    p.core.index.apply_batch(E2.hostport, EventBatch(time.time(), [cpu]))
    req = request()
    data.put_tokenized(req, DataKey(data.TOKENIZED_PROMPT, "token-producer"),
                       TokenizedPrompt(tuple(ids), estimated=False))  # fmt: skip
    p.produce(CycleState(), req, [E1, E2])
    found = data.per_endpoint(req, KEY, PrefixCacheMatchInfo)
    assert found == {
        "pod-a": PrefixCacheMatchInfo(3.0, 4, BS, 3),
        "pod-b": PrefixCacheMatchInfo(0.8, 4, BS, 1),
    }


def test_estimated_tokens_are_replaced_by_the_model_tokenizer() -> None:
    p = make(TYPE, {"tokenProcessorConfig": {"blockSize": BS}})
    req = request("Hello there, general Kenobi")
    data.put_tokenized(req, DataKey(data.TOKENIZED_PROMPT, "token-producer"),
                       TokenizedPrompt((1, 2, 3), estimated=True))  # fmt: skip
    p.produce(CycleState(), req, [E1])
    assert list(req.token_ids or ()) == Tokenizer.default().encode("Hello there, general Kenobi")


def test_tokenizers_pool_config_is_rejected_as_in_llm_d() -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"indexerConfig": {"tokenizersPoolConfig": {"modelName": "m"}}})
    assert err.value.field == "indexerConfig.tokenizersPoolConfig"
