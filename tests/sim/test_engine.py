"""The engine model in-process: batching limits, preemption and eviction under pressure, and
KV events that add up to exactly the cache's content."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvgate.kvcache.events import BlockRemoved, BlockStored, KVCacheEvent
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.sim.engine import EmissionLead, Engine, EngineConfig, SimRequest
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
            arrival = time.monotonic()  # a group arrives together (no step starts between)
            for r in group:
                r.arrival_time = arrival
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

    def spy(start: float):  # type: ignore[no-untyped-def]
        scheduled, loaded = orig(start)
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

    def spy(start: float):  # type: ignore[no-untyped-def]
        out = orig(start)
        seen.append({r.lora.name for r in engine.running if r.lora is not None})
        return out

    engine._schedule = spy  # type: ignore[method-assign]
    await run_all(engine, reqs)
    assert all(len(names) <= 1 for names in seen)  # --max-loras 1 (the default)
    assert {"a"} in seen and {"b"} in seen
    # Adapter blocks hash with the adapter's name: the same tokens under two adapters differ.
    assert reqs[0].block_hashes[0] != block_hashes(reqs[0].token_ids, 4)[0]


# --- timing: the model's TTFT counts from the HTTP receipt (arrival_time) -------------------

# speed 0.25: every modelled millisecond takes 4 ms of wall time, so a 25 ms prefill is 100 ms
# on the clock and the tolerances below hold on a loaded machine.
SLOW = LatencyModel(25.0, 0.0, 0.0, decode_base_ms=10.0)
PREFILL_S = 0.025 / 0.25
DECODE_S = 0.010 / 0.25


def slow_engine(lag_tolerance_s: float = 0.005) -> Engine:
    """``lag_tolerance_s`` 0.5 where a test checks step boundaries, not lag: a loaded machine
    may stall the loop more than the default 5 ms, which restarts the schedule from now."""
    return Engine(
        EngineConfig(block_size=4, num_gpu_blocks=64, max_num_seqs=16,
                     max_num_batched_tokens=512, max_model_len=256, speed=0.25,
                     lag_tolerance_s=lag_tolerance_s),
        SLOW,
    )  # fmt: skip


async def start(engine: Engine) -> asyncio.Task[None]:
    return asyncio.create_task(engine.run())


async def stop(engine: Engine, task: asyncio.Task[None]) -> None:
    engine.stop()
    await task


async def test_idle_engine_absorbs_intake_into_the_modelled_prefill(vocab: OutputVocab) -> None:
    engine = slow_engine(lag_tolerance_s=0.5)
    task = await start(engine)
    try:
        req = request(vocab, 1, list(range(8)), 1)
        # The HTTP server received it 30 ms ago (reading, parsing, tokenizing since).
        req.arrival_time = time.monotonic() - 0.030
        engine.add(req)
        await asyncio.wait_for(req.wait_finished(), 10)
    finally:
        await stop(engine, task)
    st = engine.stats
    assert st.lag_events == 0
    # The step started at the arrival: the model's TTFT is the prefill, not intake + prefill.
    assert req.first_scheduled_time == req.arrival_time
    assert st.model_ttft_s_sum == pytest.approx(PREFILL_S)
    assert st.intake_count == 1 and st.intake_s_sum == pytest.approx(0.030, abs=0.01)
    # The token is not delivered before the model says (timers may fire 0.2 ms early).
    ttft = req.first_token_time - req.arrival_time
    assert PREFILL_S - 0.001 <= ttft < PREFILL_S + 0.05


async def test_intake_longer_than_the_step_is_counted_as_lag(vocab: OutputVocab) -> None:
    engine = slow_engine()
    task = await start(engine)
    try:
        req = request(vocab, 1, list(range(8)), 1)
        req.arrival_time = time.monotonic() - (PREFILL_S + 0.060)
        engine.add(req)
        await asyncio.wait_for(req.wait_finished(), 10)
    finally:
        await stop(engine, task)
    st = engine.stats
    # The step ends at once (not one more prefill later) and the 60 ms excess is lag.
    assert st.lag_events == 1 and 0.055 <= st.lag_s < 0.5
    assert req.first_token_time - req.queued_time < PREFILL_S
    assert st.model_ttft_s_sum == pytest.approx(req.model_token_time - req.arrival_time)


async def test_a_request_arriving_after_a_step_began_waits_for_its_end(
    vocab: OutputVocab,
) -> None:
    engine = slow_engine(lag_tolerance_s=0.5)
    task = await start(engine)
    try:
        # Two requests taken in together by an idle engine; b arrived 20 ms after a.
        now = time.monotonic()
        a = request(vocab, 1, list(range(8)), 1)
        b = request(vocab, 2, list(range(100, 108)), 1)
        a.arrival_time, b.arrival_time = now - 0.040, now - 0.020
        engine.add(b)
        engine.add(a)
        await asyncio.wait_for(b.wait_finished(), 10)
    finally:
        await stop(engine, task)
    # a's prefill started at its arrival; b joined at the end of that step, not before.
    assert a.first_scheduled_time == a.arrival_time
    assert b.first_scheduled_time == pytest.approx(a.arrival_time + PREFILL_S)
    assert b.model_token_time == pytest.approx(a.arrival_time + 2 * PREFILL_S)
    assert engine.stats.lag_events == 0


async def test_a_request_arriving_mid_step_is_scheduled_at_the_step_boundary(
    vocab: OutputVocab,
) -> None:
    engine = slow_engine(lag_tolerance_s=0.5)
    task = await start(engine)
    planned: list[float] = []  # a's tokens' planned times: the step boundaries
    b: SimRequest | None = None
    try:
        a = request(vocab, 1, list(range(8)), 12)
        engine.add(a)
        while not a.finished:
            await asyncio.wait_for(a.wait_for_output(), 10)
            a.delivered = a.num_output_tokens
            planned.append(a.model_token_time)
            if b is None and a.num_output_tokens == 2:
                # a is decoding (steps of DECODE_S back to back): b arrives inside a step.
                b = request(vocab, 2, list(range(100, 108)), 1)
                engine.add(b)
        assert b is not None
        await asyncio.wait_for(b.wait_finished(), 10)
    finally:
        await stop(engine, task)
    assert engine.stats.lag_events == 0
    # b waited for the step in progress to end: its first step starts at one of a's planned
    # token times, the first one after b arrived.
    boundary = min(t for t in planned if t >= b.arrival_time)
    assert b.first_scheduled_time == pytest.approx(boundary)
    assert 0 <= b.first_scheduled_time - b.arrival_time <= DECODE_S + 0.001


async def test_a_blocked_loop_restarts_the_schedule_and_counts_the_lag(
    vocab: OutputVocab,
) -> None:
    engine = slow_engine()
    task = await start(engine)
    try:
        a = request(vocab, 1, list(range(8)), 8)
        engine.add(a)
        await a.wait_for_output()  # the first token: decoding now
        a.delivered = a.num_output_tokens
        time.sleep(0.15)  # the process is starved: the loop cannot run for 150 ms
        await asyncio.wait_for(a.wait_finished(), 10)
    finally:
        await stop(engine, task)
    st = engine.stats
    assert st.lag_events >= 1 and st.lag_s_max >= 0.15 - DECODE_S - 0.01


def test_emission_lead_fits_the_write_out_delay_of_a_step_by_its_size() -> None:
    lead = EmissionLead()
    assert lead.lead(10, 0.005) == 0.0  # nothing seen yet
    # Steps of one size: the lead is their mean delay.
    for _ in range(40):
        lead.add(1, 0.0003)
    assert lead.lead(1, 0.005) == pytest.approx(0.0003)
    # Steps of many sizes whose writes take 0.1 ms + 20 µs a stream on average.
    for i in range(200):
        n = 1 + (i * 37) % 256
        lead.add(n, 0.0001 + 0.00002 * n)
    assert lead.lead(16, 0.005) == pytest.approx(0.0001 + 0.00002 * 16, rel=0.02)
    assert lead.lead(128, 0.005) == pytest.approx(0.0001 + 0.00002 * 128, rel=0.02)
    assert lead.lead(256, 0.004) == 0.004  # never past the cap (--emit-lead-max-ms, half a step)
    assert lead.lead(256, 0.0) == 0.0  # --emit-lead-max-ms 0 turns it off
    # Writes that leave early make no lead (a step never completes late on purpose).
    early = EmissionLead()
    early.add(4, -0.001)
    assert early.lead(4, 0.005) == 0.0
