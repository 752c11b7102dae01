"""The latency model as clients see it: a cached prefix cuts TTFT by what the model says, and
a bigger batch slows decode as modelled. The assertions compare measured times with the
model's own formula (generous tolerances for a shared machine); they check the model, not a
performance goal."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvgate.sim.profiles import load_profile
from support.procs import Proc
from support.sim import SimHandle, start_sim

PROFILE = {
    "name": "test-slow",
    "block_size": 16,
    "num_gpu_blocks": 4096,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 8192,
    "max_model_len": 4096,
    "latency": {
        "prefill_base_ms": 40.0,
        "prefill_ms_per_token": 0.2,
        "prefill_ms_per_token_sq": 0.0,
        "cached_base_ms": 5.0,
        "cached_ms_per_token": 0.02,
        "decode_base_ms": 20.0,
        "decode_ms_per_seq": 2.0,
    },
}


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "slow.json"
    path.write_text(json.dumps(PROFILE))
    return path


@pytest.fixture(scope="module")
def sim(module_spawn: Callable[..., Proc], profile_path: Path) -> SimHandle:
    return start_sim(module_spawn, model="t", profile=str(profile_path))


async def stream_times(
    session: aiohttp.ClientSession, sim: SimHandle, prompt: list[int], max_tokens: int
) -> list[float]:
    """Arrival time of each token chunk, relative to sending the request."""
    body = {
        "model": "t",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    start = time.perf_counter()
    times: list[float] = []
    async with session.post(sim.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {"):
                times.append(time.perf_counter() - start)
    return times


async def test_cached_prefix_cuts_ttft_by_the_modelled_amount(
    sim: SimHandle, profile_path: Path
) -> None:
    model = load_profile(str(profile_path)).latency
    n = 1000
    prompt = [1000 + (i * 7919) % 20000 for i in range(n)]
    cached = (n - 1) // 16 * 16
    cold_ms = model.ttft_ms(n)
    hit_ms = model.ttft_ms(n, cached)
    assert cold_ms == pytest.approx(240.0) and hit_ms == pytest.approx(66.44)
    async with aiohttp.ClientSession() as session:
        cold = (await stream_times(session, sim, prompt, 2))[0] * 1000
        hit = (await stream_times(session, sim, prompt, 2))[0] * 1000
    # The measured TTFT holds HTTP and scheduling overhead of a few ms on top of the model.
    assert cold_ms - 5 <= cold <= cold_ms * 1.15 + 20
    assert hit_ms - 5 <= hit <= hit_ms * 1.15 + 20
    assert cold - hit == pytest.approx(cold_ms - hit_ms, rel=0.15, abs=15)


async def test_bigger_batch_slows_decode_as_modelled(sim: SimHandle, profile_path: Path) -> None:
    model = load_profile(str(profile_path)).latency

    def itls(times: list[float]) -> list[float]:
        return [(b - a) * 1000 for a, b in itertools.pairwise(times[5:])]

    async with aiohttp.ClientSession() as session:
        single = await stream_times(session, sim, list(range(5000, 5016)), 30)
        batch = await asyncio.gather(
            *(
                stream_times(session, sim, list(range(6000 + 100 * i, 6016 + 100 * i)), 30)
                for i in range(8)
            )
        )
    single_itl = statistics.median(itls(single))
    batch_itl = statistics.median([x for times in batch for x in itls(times)])
    assert single_itl == pytest.approx(model.decode_step_ms(1), rel=0.1, abs=2)
    assert batch_itl == pytest.approx(model.decode_step_ms(8), rel=0.1, abs=2)
    assert model.decode_step_ms(8) - model.decode_step_ms(1) == pytest.approx(14.0)


async def test_metrics_report_modelled_latencies(sim: SimHandle) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session:
        await stream_times(session, sim, list(range(7000, 7100)), 3)
        async with session.get(sim.url + "/metrics") as resp:
            text = await resp.text()
    families: dict[str, Any] = {f.name: f for f in text_string_to_metric_families(text)}
    ttft = families["vllm:time_to_first_token_seconds"]
    count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
    total = next(s.value for s in ttft.samples if s.name.endswith("_sum"))
    assert count >= 1 and total / count > 0.02  # every TTFT here is at least 40 ms modelled


async def test_ttft_counts_from_receipt_and_an_idle_engine_absorbs_the_intake(
    sim: SimHandle, profile_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    model = load_profile(str(profile_path)).latency
    n = 200
    prompt = [30_000 + i for i in range(n)]  # tokens no other test sends: no cache hit
    modelled_s = model.ttft_ms(n) / 1000  # 80 ms

    async def snapshot(session: aiohttp.ClientSession) -> tuple[dict[str, Any], float]:
        async with session.get(sim.url + "/sim/stats") as resp:
            stats = await resp.json()
        async with session.get(sim.url + "/metrics") as resp:
            text = await resp.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        ttft = fams["vllm:time_to_first_token_seconds"].samples
        return stats, next(s.value for s in ttft if s.name.endswith("_sum"))

    async with aiohttp.ClientSession() as session:
        before, ttft_sum0 = await snapshot(session)
        client_s = (await stream_times(session, sim, prompt, 1))[0]
        after, ttft_sum1 = await snapshot(session)
    assert after["lag_events"] == before["lag_events"]
    assert after["intake_count"] - before["intake_count"] == 1
    # The engine's modelled TTFT, from HTTP receipt to the planned end of the prefill, is the
    # prefill alone: reading, parsing and tokenizing were absorbed, not added.
    count = after["model_ttft_count"] - before["model_ttft_count"]
    model_s = (after["model_ttft_s_sum"] - before["model_ttft_s_sum"]) / count
    assert count == 1 and model_s == pytest.approx(modelled_s, rel=1e-6)
    # vllm:time_to_first_token_seconds counts from receipt too; the client adds only transport.
    served_s = ttft_sum1 - ttft_sum0
    assert modelled_s - 0.001 <= served_s <= client_s
    assert modelled_s - 0.001 <= client_s <= modelled_s * 1.1 + 0.010


async def test_every_streamed_token_write_is_reported_against_the_model(sim: SimHandle) -> None:
    async def stats(session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(sim.url + "/sim/stats") as resp:
            out: dict[str, Any] = await resp.json()
        return out

    async with aiohttp.ClientSession() as session:
        before = await stats(session)
        times = await stream_times(session, sim, [31_000 + i for i in range(20)], 6)
        after = await stats(session)
    assert len(times) == 6
    # One report per written token (the first token's on its own too); the leads the engine
    # completes steps with stay within --emit-lead-max-ms (5 ms by default).
    assert after["emit_count"] - before["emit_count"] == 6
    assert after["emit_first_count"] - before["emit_first_count"] == 1
    assert 0.0 <= after["emit_lead_s"] <= 0.005 and 0.0 <= after["emit_lead_first_s"] <= 0.005
