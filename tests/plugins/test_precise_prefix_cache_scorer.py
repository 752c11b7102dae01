"""precise-prefix-cache-scorer: llm-d's parameters, the formula, tiers, the hooks, lifecycle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import zmq
import zmq.asyncio

from kvgate.bench.workloads import TextGen
from kvgate.errors import PluginParameterError
from kvgate.kvcache import events
from kvgate.kvcache.events import BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.tokenize import Tokenizer, builtin_tokenizer_dir, chunk_encoder
from kvgate.plugins.base import EndpointListener, Lifecycle, PreRequest, ResponseComplete, Scorer
from kvgate.plugins.scorers.precise_prefix_cache_scorer import (
    HEADER_PREDICTED_CACHED_TOKENS,
    PreciseMatchState,
    PrecisePrefixCacheScorer,
)
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
)
from plugins.kit import FakeClock, ctx, make, request
from support.procs import free_port

TYPE = "precise-prefix-cache-scorer"
E1 = Endpoint("pod-a", "10.0.0.1", 8000)
E2 = Endpoint("pod-b", "10.0.0.2", 8000)
E3 = Endpoint("pod-c", "10.0.0.3", 8000)
BS = 4


def _scorer(params: dict[str, Any] | None = None) -> PrecisePrefixCacheScorer:
    base = {"tokenProcessorConfig": {"blockSize": BS}}
    return make(TYPE, {**base, **(params or {})})  # type: ignore[no-any-return]


def _store(s: PrecisePrefixCacheScorer, ep: Endpoint, ids: list[int], n: int, medium: str = "GPU",
           base: int = 0) -> None:  # fmt: skip
    """``ep`` stores the first ``n`` blocks of ``ids``."""
    hashes = [base + i + 1 for i in range(n)]
    event = BlockStored(hashes, None, ids[: n * BS], BS, medium=medium)
    s.index.apply_batch(ep.hostport, EventBatch(time.time(), [event]))


def test_roles_and_registry() -> None:
    s = _scorer()
    for role in (Scorer, PreRequest, ResponseComplete, EndpointListener, Lifecycle):
        assert isinstance(s, role)
    assert s.type_name == TYPE and s.index.block_size == BS


def test_score_is_weighted_longest_prefix_over_full_blocks() -> None:
    s = _scorer()
    req = request("the quick brown fox jumps over the lazy dog " * 6)
    ids = list(s.tokenizer.encode_request(req))
    n = len(ids) // BS
    assert n >= 8
    _store(s, E1, ids, n)  # everything, GPU
    _store(s, E2, ids, n // 2, base=100)  # half, GPU
    _store(s, E3, ids, n, medium="CPU", base=200)  # everything, CPU tier
    state = CycleState()
    scores = s.score(state, req, [E1, E2, E3])
    assert scores == {
        "pod-a": 1.0,
        "pod-b": pytest.approx((n // 2) / n),
        "pod-c": pytest.approx(0.8),
    }
    found = state.read(f"{TYPE}/{TYPE}", PreciseMatchState)
    assert found is not None and found.num_blocks == n and found.num_tokens == len(ids)
    assert found.blocks == {"pod-a": n, "pod-b": n // 2, "pod-c": n}
    # vLLM always computes the last prompt token: at most (len - 1) // BS blocks are cached
    assert found.cached_tokens["pod-a"] == min(n, (len(ids) - 1) // BS) * BS
    assert req.token_ids == tuple(ids)  # tokenized once, memoised on the request


def test_a_resent_long_prefix_is_tokenized_through_the_chunk_cache() -> None:
    s = _scorer()
    system = TextGen(21).text(3000)  # several chunks of the shared encoder
    encoder = chunk_encoder(s.tokenizer)
    s.score(CycleState(), request(system + " first question"), [E1])
    misses, hits = encoder.misses, encoder.hits
    req = request(system + " second question", request_id="r2")
    s.score(CycleState(), req, [E1])
    assert req.token_ids == tuple(s.tokenizer.encode(system + " second question"))
    assert encoder.misses - misses == 1 and encoder.hits - hits >= 3


def test_eviction_events_lower_the_score() -> None:
    s = _scorer()
    req = request("alpha beta gamma delta " * 8)
    ids = list(s.tokenizer.encode_request(req))
    n = len(ids) // BS
    _store(s, E1, ids, n)
    assert s.score(CycleState(), req, [E1]) == {"pod-a": 1.0}
    s.index.apply_batch(E1.hostport, EventBatch(0.0, [BlockRemoved([3], "GPU")]))  # block 2
    assert s.score(CycleState(), req, [E1]) == {"pod-a": pytest.approx(2 / n)}


def test_chat_requests_use_the_chat_template_and_short_prompts_score_zero() -> None:
    s = _scorer()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    req = request(messages=messages)
    ids = Tokenizer.default().encode_chat(messages)
    _store(s, E1, ids, len(ids) // BS)
    assert s.score(CycleState(), req, [E1, E2]) == {"pod-a": 1.0}
    assert s.score(CycleState(), request("hi"), [E1]) == {}


def test_unknown_block_size_scores_nothing_until_an_event_teaches_it() -> None:
    s = make(TYPE, {})
    req = request("one two three four five six seven eight nine ten " * 8)
    assert s.score(CycleState(), req, [E1]) == {}
    ids = list(s.tokenizer.encode_request(req))
    event = BlockStored([1, 2], None, ids[:32], 16, medium="GPU")
    s.index.apply_batch(E1.hostport, EventBatch(0.0, [event]))
    assert s.index.block_size == 16
    assert s.score(CycleState(), req, [E1])["pod-a"] == pytest.approx(2 / (len(ids) // 16))


def test_hooks_expose_predicted_cached_tokens_for_the_pick() -> None:
    s = _scorer()
    req = request("lorem ipsum dolor sit amet " * 6)
    ids = list(s.tokenizer.encode_request(req))
    _store(s, E1, ids, 3)
    s.score(CycleState(), req, [E1, E2])
    result = SchedulingResult({"default": ProfileRunResult((E1,))}, "default")
    headers: dict[str, str] = {}
    s.pre_request(req, result, headers)
    assert req.extra["predicted_cached_tokens"] == 3 * BS and headers == {}
    info = ResponseInfo(status=200)
    s.response_complete(req, info, E1)
    assert info.headers == {HEADER_PREDICTED_CACHED_TOKENS: str(3 * BS)}
    info2 = ResponseInfo(status=200)
    s.response_complete(req, info2, E2)  # a retry went elsewhere
    assert info2.headers == {HEADER_PREDICTED_CACHED_TOKENS: "0"}


def test_endpoints_removed_purges_their_entries() -> None:
    s = _scorer()
    req = request("abc def ghi jkl mno pqr " * 4)
    ids = list(s.tokenizer.encode_request(req))
    _store(s, E1, ids, 2)
    assert s.score(CycleState(), req, [E1]) != {}
    s.endpoints_removed(["pod-a"])
    assert s.score(CycleState(), req, [E1]) == {}
    assert s.index.endpoints() == []


def test_speculative_indexing_predicts_the_routed_prefix_until_events_can_tell() -> None:
    clock = FakeClock()
    s = make(
        TYPE,
        {
            "tokenProcessorConfig": {"blockSize": BS},
            "indexerConfig": {"speculativeIndexing": True},
            "speculativeTTL": "500ms",
        },
        ctx(clock=clock),
    )
    assert s.speculative is not None and s.speculative.ttl_s == 0.5
    system = "you are a helpful assistant for the acme corporation " * 4
    first = request(system + "first question", request_id="r1")
    second = request(system + "second question", request_id="r2")
    assert s.score(CycleState(), first, [E1, E2]) == {}
    s.pre_request(first, SchedulingResult({"default": ProfileRunResult((E2,))}, "default"), {})
    # no event yet, and none for as long as the first request is in flight
    clock.advance(120)
    scores = s.score(CycleState(), second, [E1, E2])
    shared = len(s.tokenizer.encode(system)) // BS
    n = len(s.tokenizer.encode(system + "second question")) // BS
    assert set(scores) == {"pod-b"} and scores["pod-b"] >= (shared - 1) / n
    # predictions raise the score, not the predicted cached tokens (what engines reported)
    assert second.extra["precise_cached_tokens"] == {"pod-a": 0, "pod-b": 0}
    s.response_complete(first, ResponseInfo(status=200), E2)
    clock.advance(0.4)
    assert "pod-b" in s.score(CycleState(), request(system + "third", request_id="r3"), [E2])
    clock.advance(0.2)  # past the TTL, and the engine never reported the blocks
    assert s.score(CycleState(), request(system + "fourth", request_id="r4"), [E2]) == {}
    # off by default, as in llm-d
    assert _scorer().speculative is None


def test_llmd_parameters_and_tier_weights() -> None:
    tokenizer_dir = str(builtin_tokenizer_dir())
    s = make(
        TYPE,
        {
            "indexerConfig": {
                "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "42"},
                "kvBlockIndexConfig": {
                    "inMemoryConfig": {"size": 1000, "podCacheSize": 10},
                    "enableMetrics": True,
                },
                "tokenizersPoolConfig": {
                    "modelName": "m",
                    "tokenizerPath": tokenizer_dir,
                    "local": {"modelTokenizerMap": {"other": tokenizer_dir}},
                },
                "kvCacheBackendConfigs": [
                    {"name": "gpu", "weight": 1.0},
                    {"name": "cpu", "weight": 0.5},
                ],
            },
            "kvEventsConfig": {
                "zmqEndpoint": "tcp://*:6000",
                "topicFilter": "kv@",
                "concurrency": 8,
                "replayEndpoints": {"10.0.0.1:8000": "tcp://10.0.0.1:5558"},
            },
        },
    )
    assert s.index.block_size == 64 and s.index.hash_seed == "42" and s.index.max_blocks == 1000
    assert s.events.zmq_endpoint == "tcp://*:6000"
    assert s.events.replay_endpoints == {"10.0.0.1:8000": "tcp://10.0.0.1:5558"}
    assert s.index._field_weight == [0.0, 1.0, 0.5, 1.0]
    assert set(s.model_tokenizers) == {"other"}
    shorthand = _scorer({"tierWeights": {"GPU": 1, "cpu": 0.25}})
    assert shorthand.index._field_weight == [0.0, 1.0, 0.25, 1.0]
    discover = make(TYPE, {"kvEventsConfig": {"discoverPods": True}})
    assert discover.events.zmq_endpoint is None and discover.events.socket_port == 5556


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kvEventsConfig": {"zmqEndpint": "x"}}, "kvEventsConfig.zmqEndpint"),
        ({"tokenProcessorConfig": {"blockSize": "16"}}, "tokenProcessorConfig.blockSize"),
        (
            {"indexerConfig": {"kvBlockIndexConfig": {"inMemoryConfig": {"size": 0}}}},
            "indexerConfig.kvBlockIndexConfig.inMemoryConfig.size",
        ),
        (
            {"indexerConfig": {"tokenizersPoolConfig": {"tokenizerPath": "/no/such/dir"}}},
            "indexerConfig.tokenizersPoolConfig.tokenizerPath",
        ),
        ({"tierWeights": {"gpu": -1}}, "tierWeights.gpu"),
        (
            {"kvEventsConfig": {"replayEndpoints": {"a:1": "http://x"}}},
            "kvEventsConfig.replayEndpoints.a:1",
        ),
        ({"indexerConfig": {"nope": 1}}, "indexerConfig.nope"),
        ({"speculative": True}, "speculative"),
        ({"speculativeTTL": "soon"}, "speculativeTTL"),
        ({"speculativeIndexing": "yes"}, "speculativeIndexing"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginParameterError) as info:
        make(TYPE, params)
    assert info.value.field == field


async def test_lifecycle_binds_and_ingests_events() -> None:
    port = free_port()
    s = make(TYPE, {"kvEventsConfig": {"zmqEndpoint": f"tcp://127.0.0.1:{port}"}}, ctx())
    await s.start()
    zctx = zmq.asyncio.Context()
    pub = zctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        pub.connect(f"tcp://127.0.0.1:{port}")
        assert await pub.recv() == b"\x01kv@"  # subscribed
        req = request("streams of events feed the index " * 10)
        ids = list(s.tokenizer.encode_request(req))
        batch = EventBatch(time.time(), [BlockStored([1, 2], None, ids[:32], 16, medium="GPU")])
        topic = events.make_topic(E1.hostport, "m")
        await pub.send_multipart(events.encode_frames(topic, 0, batch))
        deadline = time.monotonic() + 5
        while s.index.num_blocks < 2:
            assert time.monotonic() < deadline, "event not ingested"
            await asyncio.sleep(0.005)
        assert s.score(CycleState(), req, [E1, E2]) == {
            "pod-a": pytest.approx(2 / (len(ids) // 16))
        }
    finally:
        pub.close(0)
        zctx.term()
        await s.stop()
    assert s.subscriber is None
