"""The engine model in-process: batching limits, preemption and eviction under pressure, and
KV events that add up to exactly the cache's content."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.kvcache.events import BlockRemoved, BlockStored, KVCacheEvent
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.sim.engine import Engine, EngineConfig, SimRequest
from kvgate.sim.output import OutputVocab, TokenStream
from kvgate.sim.profiles import LatencyModel

LATENCY = LatencyModel(2.0, 0.01, 0.0, 0.0, 0.0, 2.0, 0.1)


@pytest.fixture(scope="module")
def vocab() -> OutputVocab:
    return OutputVocab(Tokenizer.default())


def make_engine(events: list[KVCacheEvent] | None = None, **kw: int) -> Engine:
    cfg = {
        "block_size": 4,
        "num_gpu_blocks": 64,
        "max_num_seqs": 16,
        "max_num_batched_tokens": 512,
        "max_model_len": 256,
        **kw,
    }
    return Engine(
        EngineConfig(speed=1000.0, **cfg),  # type: ignore[arg-type]
        LATENCY,
        publish=events.extend if events is not None else None,
    )


def request(vocab: OutputVocab, rid: int, prompt: list[int], max_tokens: int) -> SimRequest:
    stream = TokenStream(
        vocab, mode="random", seed=rid, max_tokens=max_tokens, echo_ids=[],
        natural_length=False, stop=[], ignore_eos=True,
    )  # fmt: skip
    return SimRequest(str(rid), prompt, stream, max_tokens=max_tokens)


async def run_all(
    engine: Engine, reqs: list[SimRequest], *later: list[SimRequest], timeout_s: float = 20.0
) -> None:
    """Run ``reqs`` to completion, then each ``later`` group in turn, on one engine task."""
    task = asyncio.create_task(engine.run())
    try:
        for group in (reqs, *later):
            for r in group:
                engine.add(r)

            async def done(group: list[SimRequest] = group) -> None:
                for r in group:
                    await r.wait_finished()

            await asyncio.wait_for(done(), timeout_s)
    finally:
        engine.stop()
        await task


async def test_preemption_under_block_pressure_finishes_everything(vocab: OutputVocab) -> None:
    # 8 blocks of 4 tokens; each request needs 3 (prompt) to 5 (end) blocks: they cannot all fit.
    engine = make_engine(num_gpu_blocks=8)
    reqs = [request(vocab, i, [100 + i] * 10 + list(range(i * 7, i * 7 + 2)), 8) for i in range(4)]
    await run_all(engine, reqs)
    assert engine.stats.preemptions > 0
    assert all(r.finish_reason == "length" and r.num_output_tokens == 8 for r in reqs)
    assert sum(r.num_preemptions for r in reqs) == engine.stats.preemptions
    assert engine.kv.num_free_blocks == 8  # every block returned
    assert engine.stats.generation_tokens == 32


async def test_batch_limits_are_respected(vocab: OutputVocab) -> None:
    engine = make_engine(max_num_seqs=3, max_num_batched_tokens=16)
    seen_running: list[int] = []
    orig = engine._schedule

    def spy(now: float):  # type: ignore[no-untyped-def]
        scheduled, loaded = orig(now)
        seen_running.append(len(engine.running))
        assert sum(n for _, n, _ in scheduled) <= 16
        return scheduled, loaded

    engine._schedule = spy  # type: ignore[method-assign]
    reqs = [request(vocab, i, list(range(i, i + 30)), 3) for i in range(6)]
    await run_all(engine, reqs)
    assert max(seen_running) == 3
    assert all(r.num_output_tokens == 3 for r in reqs)


async def test_events_add_up_to_exactly_the_cached_blocks(vocab: OutputVocab) -> None:
    events: list[KVCacheEvent] = []
    engine = make_engine(events, num_gpu_blocks=12)
    shared = list(range(1000, 1016))  # 4 shared blocks
    reqs = [request(vocab, i, shared + [i] * 9, 6) for i in range(6)]
    await run_all(engine, reqs[:3], reqs[3:])
    live: set[int] = set()
    stored = removed = 0
    for ev in events:
        if isinstance(ev, BlockStored):
            assert ev.medium == "GPU" and ev.block_size == 4
            assert len(ev.token_ids) == 4 * len(ev.block_hashes)
            for h in ev.block_hashes:
                assert h not in live
                live.add(h)
                stored += 1
        elif isinstance(ev, BlockRemoved):
            for h in ev.block_hashes:
                live.remove(h)
                removed += 1
    assert removed > 0  # the cache was too small to keep everything
    assert live == {to_event_hash(h) for h in engine.kv.cached}
    # Each request's stored prompt blocks are vLLM's hashes of its tokens.
    first = next(e for e in events if isinstance(e, BlockStored))
    assert first.parent_block_hash is None
    expected = block_hashes(reqs[0].token_ids, 4)
    assert first.block_hashes == [to_event_hash(h) for h in expected[: len(first.block_hashes)]]
    # The later requests reused the shared prefix (as cached tokens, full blocks only).
    assert reqs[1].num_cached_tokens == 16 and reqs[4].num_cached_tokens >= 0


async def test_cpu_offload_tier_serves_evicted_prefix_and_costs_load_time(
    vocab: OutputVocab,
) -> None:
    events: list[KVCacheEvent] = []
    latency = LatencyModel(2.0, 0.01, 0.0, 0.0, 0.0, 2.0, 0.1, offload_load_ms_per_block=1.5)
    engine = Engine(
        EngineConfig(block_size=4, num_gpu_blocks=6, max_num_seqs=4, max_num_batched_tokens=512,
                     max_model_len=24, speed=1000.0, offload_blocks=32),
        latency,
        publish=events.extend,
    )  # fmt: skip
    first = request(vocab, 1, list(range(300, 317)), 2)  # 17 tokens: 4 full blocks
    other = request(vocab, 2, list(range(400, 417)), 2)  # evicts most of first's blocks
    again = request(vocab, 3, list(range(300, 317)), 2)
    prices: list[float] = []
    orig = engine._price

    def spy(scheduled, loaded):  # type: ignore[no-untyped-def]
        ms = orig(scheduled, loaded)
        prices.append(loaded)
        return ms

    engine._price = spy  # type: ignore[method-assign]
    await run_all(engine, [first], [other], [again])
    assert again.num_cached_tokens == 16
    assert engine.stats.prompt_tokens_cached_cpu > 0
    assert max(prices) > 0  # blocks were loaded back from CPU
    assert any(isinstance(e, BlockStored) and e.medium == "CPU" for e in events)
    assert any(isinstance(e, BlockRemoved) and e.medium == "GPU" for e in events)


async def test_max_loras_defers_other_adapters(vocab: OutputVocab) -> None:
    from kvgate.sim.engine import LoraAdapter

    engine = make_engine(max_num_seqs=8)
    a, b = LoraAdapter("a", "/a", 1), LoraAdapter("b", "/b", 2)
    reqs = [request(vocab, i, list(range(10 * i, 10 * i + 8)), 6) for i in range(4)]
    reqs[0].lora = reqs[1].lora = a
    reqs[2].lora = reqs[3].lora = b
    seen: list[set[str]] = []
    orig = engine._schedule

    def spy(now: float):  # type: ignore[no-untyped-def]
        out = orig(now)
        seen.append({r.lora.name for r in engine.running if r.lora is not None})
        return out

    engine._schedule = spy  # type: ignore[method-assign]
    await run_all(engine, reqs)
    assert all(len(names) <= 1 for names in seen)  # --max-loras 1 (the default)
    assert {"a"} in seen and {"b"} in seen
    # Adapter blocks hash with the adapter's name: the same tokens under two adapters differ.
    assert reqs[0].block_hashes[0] != block_hashes(reqs[0].token_ids, 4)[0]
