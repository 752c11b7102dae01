"""oracle-prefix-cache-scorer: exact engine block hashes from KV events, speculative picks."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from kvgate.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    encode_frames,
)
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import default_registry
from kvgate.plugins.scorers.oracle_prefix_scorer import TYPE, OraclePrefixCacheScorer
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from support.procs import free_port

BLOCK = 16


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **params: object) -> OraclePrefixCacheScorer:
    plugin = default_registry().create(
        TYPE, "oracle", {"blockSize": BLOCK, **params}, PluginContext(clock=clock)
    )
    assert isinstance(plugin, OraclePrefixCacheScorer)
    return plugin


def prompt_of(num_tokens: int, offset: int = 0) -> str:
    from kvgate.bench.workloads import single_token_words

    words = single_token_words()
    return "".join(words[(offset + i) % len(words)] for i in range(num_tokens))


def stored_event(prompt: str) -> BlockStored:
    ids = Tokenizer.default().encode(prompt)
    n = len(ids) // BLOCK * BLOCK
    hashes = [to_event_hash(h) for h in block_hashes(ids, BLOCK)]
    return BlockStored(
        block_hashes=list(hashes),
        parent_block_hash=None,
        token_ids=ids[:n],
        block_size=BLOCK,
        medium="GPU",
    )


def endpoints() -> list[Endpoint]:
    return [Endpoint("127.0.0.1:1", "127.0.0.1", 1), Endpoint("127.0.0.1:2", "127.0.0.1", 2)]


def test_scores_the_longest_cached_prefix() -> None:
    clock = Clock()
    oracle = make(clock)
    a, b = endpoints()
    doc = prompt_of(160)
    oracle.apply_event(a.name, stored_event(doc))  # 10 blocks on a
    oracle.apply_event(b.name, stored_event(doc[: len(prompt_of(48))]))  # 3 blocks on b
    req = Request("r1", "m", prompt=doc + prompt_of(160, offset=999))  # 20 blocks
    scores = oracle.score(CycleState(), req, [a, b])
    assert scores == {a.name: pytest.approx(0.5), b.name: pytest.approx(0.15)}
    # removal of one middle block cuts the prefix there
    ev = stored_event(doc)
    oracle.apply_event(a.name, BlockRemoved(block_hashes=[ev.block_hashes[4]], medium="GPU"))
    assert oracle.score(CycleState(), Request("r2", "m", prompt=doc), [a])[a.name] == 0.4
    oracle.apply_event(a.name, AllBlocksCleared())
    assert oracle.score(CycleState(), Request("r3", "m", prompt=doc), [a])[a.name] == 0.0


def test_speculative_update_on_pick_then_expiry() -> None:
    clock = Clock()
    oracle = make(clock, speculativeTtlSeconds=5)
    a, b = endpoints()
    doc = prompt_of(64)
    req = Request("r1", "m", prompt=doc)
    result = SchedulingResult({"default": ProfileRunResult((b,))}, "default")
    oracle.pre_request(req, result, {})
    follow = Request("r2", "m", prompt=doc + prompt_of(64, offset=7))
    assert oracle.score(CycleState(), follow, [a, b]) == {a.name: 0.0, b.name: 0.5}
    clock.now += 6  # no event confirmed the blocks: they expire
    follow2 = Request("r3", "m", prompt=doc)
    assert oracle.score(CycleState(), follow2, [a, b])[b.name] == 0.0
    # an event confirms them for good
    oracle.pre_request(req, result, {})
    oracle.apply_event(b.name, stored_event(doc))
    clock.now += 60
    assert oracle.score(CycleState(), Request("r4", "m", prompt=doc), [b])[b.name] == 1.0


def test_cpu_tier_and_short_prompts_score_zero() -> None:
    oracle = make(Clock())
    a, _ = endpoints()
    ev = stored_event(prompt_of(32))
    ev.medium = "CPU"
    oracle.apply_event(a.name, ev)
    assert oracle.score(CycleState(), Request("r", "m", prompt=prompt_of(32)), [a])[a.name] == 0
    assert oracle.score(CycleState(), Request("s", "m", prompt=prompt_of(5)), [a])[a.name] == 0


def test_bad_parameters_are_rejected() -> None:
    from kvgate.errors import PluginParameterError

    with pytest.raises(PluginParameterError, match="hashAlgo"):
        make(Clock(), hashAlgo="md5")
    with pytest.raises(PluginParameterError, match="speculative"):
        make(Clock(), speculativeTtl=3)


async def test_events_arrive_over_zmq() -> None:
    port = free_port()
    clock = Clock()
    oracle = make(clock, kvEventsConfig={"zmqEndpoint": f"tcp://127.0.0.1:{port}"})
    await oracle.start()
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"tcp://127.0.0.1:{port}")
    a, _ = endpoints()
    doc = prompt_of(48)
    try:
        batch = EventBatch(ts=1.0, events=[stored_event(doc)])
        deadline = asyncio.get_running_loop().time() + 10
        seq = 0
        # PUB drops messages until the subscription has propagated: resend until seen
        while oracle.events_applied == 0:
            await pub.send_multipart(encode_frames(f"kv@{a.name}@m", seq, batch))
            seq += 1
            await asyncio.sleep(0.02)
            assert asyncio.get_running_loop().time() < deadline, "no event arrived"
        scores = oracle.score(CycleState(), Request("r", "m", prompt=doc), [a])
        assert scores[a.name] == 1.0
    finally:
        pub.close(0)
        await oracle.stop()
