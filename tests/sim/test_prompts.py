"""sim.prompts and the schedule-lag metric: long prompts are tokenized exactly (the tokenizer's
own ids, chat and plain), through the chunk cache and off the event loop, and a replica that
falls behind its modelled schedule says so in /metrics and /sim/stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from kvgate.bench.workloads import TextGen
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.sim.profiles import load_profile
from kvgate.sim.prompts import PromptEncoder
from kvgate.sim.server import SimSettings, SimState, build_app


@pytest.fixture
async def sim() -> AsyncIterator[TestClient[Any, Any]]:
    """The simulator's app in process, its engine running, at real time (speed 1)."""
    settings = SimSettings(
        host="127.0.0.1", port=0, model="m", served_model_names=["m"],
        profile=load_profile("qwen3-0.6b-h100"),
    )  # fmt: skip
    state = SimState(settings)
    engine_task = asyncio.create_task(state.engine.run())
    client = TestClient(TestServer(build_app(state)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        state.engine.stop()
        engine_task.cancel()
        state.prompts.close()


async def test_long_prompts_get_the_tokenizers_ids_through_the_chunk_cache(
    sim: TestClient[Any, Any],
) -> None:
    client = sim
    tok = Tokenizer.default()
    gen = TextGen(21)
    prefix = gen.text(3000)
    questions = [gen.text(50) for _ in range(2)]
    for question in questions:
        prompt = prefix + question
        r = await client.post("/tokenize", json={"prompt": prompt})
        assert (await r.json())["tokens"] == tok.encode(prompt)
        chat = [{"role": "system", "content": prefix}, {"role": "user", "content": question}]
        r = await client.post("/tokenize", json={"messages": chat})
        assert (await r.json())["tokens"] == tok.encode_chat(chat)
        r = await client.post("/v1/chat/completions", json={"messages": chat, "max_tokens": 2})
        assert (await r.json())["usage"]["prompt_tokens"] == len(tok.encode_chat(chat))
        r = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
        assert (await r.json())["usage"]["prompt_tokens"] == len(tok.encode(prompt))
    stats = await (await client.get("/sim/stats")).json()
    assert stats["tokenize_offloaded"] == 8
    # The second round found the shared prefix's chunks cached.
    assert stats["tokenize_chunk_hits"] >= stats["tokenize_chunk_misses"] / 2 > 0
    # A short prompt stays on the loop.
    r = await client.post("/tokenize", json={"prompt": "hello there"})
    assert (await r.json())["tokens"] == tok.encode("hello there")
    assert (await (await client.get("/sim/stats")).json())["tokenize_offloaded"] == 8


async def test_a_cold_long_prompt_is_encoded_while_the_loop_keeps_running() -> None:
    tok = Tokenizer.default()
    prompts = PromptEncoder(tok)
    text = TextGen(22).text(60_000)  # ~40-150 ms to encode cold
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        ids = await prompts.encode(text)
    finally:
        done = True
        await task
        prompts.close()
    assert ids == tok.encode(text)
    # Encoded inline, the loop could not have run the ticker more than once meanwhile.
    assert ticks > 20, ticks


async def test_falling_behind_the_schedule_is_exported(
    sim: TestClient[Any, Any],
) -> None:
    client = sim
    body = {"prompt": "tell me a story", "max_tokens": 60, "ignore_eos": True, "stream": True}
    async with client.post("/v1/completions", json=body) as resp:
        assert resp.status == 200
        await resp.content.readline()  # the first token: the request is decoding
        time.sleep(0.1)  # block the event loop, as a long inline tokenization would
        await resp.read()
    text = await (await client.get("/metrics")).text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    lag = {s.name: s.value for s in fams["kvgate_sim_schedule_lag_seconds"].samples}
    stats = await (await client.get("/sim/stats")).json()
    assert lag["kvgate_sim_schedule_lag_seconds_count"] == stats["lag_events"] >= 1
    assert lag["kvgate_sim_schedule_lag_seconds_sum"] == pytest.approx(stats["lag_s"])
    assert stats["lag_s_max"] >= 0.09
