"""The load generator against a real simulator: streamed chunks, TTFT and per-token ITL."""

from __future__ import annotations

import statistics
import time
from typing import Any

from kvgate.bench.runner import LoadSpec, RequestRecord, RunConfig, run_sync
from kvgate.bench.workloads import build_workload
from support.sim import SimHandle, start_sim


def _run(sim: SimHandle, interval: int) -> list[RequestRecord]:
    workload = build_workload(
        "shared-prefix",
        {"num_groups": 1, "prompts_per_group": 3, "question_len": 8, "output_len": 21},
        seed=1,
    )
    load = LoadSpec(mode="concurrency", concurrency=1)
    records, _ = run_sync(
        RunConfig(base_url=sim.url, stream_interval=interval), workload, load, None
    )
    return records


def test_itl_is_per_token_whatever_the_stream_interval(spawn: Any) -> None:
    # half speed: a modelled decode step of ~4 ms takes ~8 ms, well above the process's noise
    sim = start_sim(spawn, model="bench-model", speed=0.5)
    medians = {}
    for interval in (1, 4):
        records = _run(sim, interval)
        assert len(records) == 3
        for rec in records:
            assert rec.ok, rec.error
            assert rec.output_tokens == rec.max_tokens == 21
            chunks = len(rec.itl_s) + 1
            if interval == 1:
                assert chunks == 21  # one token a chunk
            else:  # the first token alone, then at least `interval` tokens a chunk
                assert chunks <= 2 + (21 - 1) // interval
        medians[interval] = statistics.median(g for r in records for g in r.itl_s)
    # divided by the tokens each chunk carried: the same per-token gap batched or not (an
    # undivided 4-token chunk gap would be ~4x)
    assert 0.5 < medians[4] / medians[1] < 2.0, medians


def test_stop_when_ends_an_open_loop_run_and_cancels_what_is_in_flight(spawn: Any) -> None:
    # one sequence at a time, ~1 s each: the backlog would take ~20 s to drain
    sim = start_sim(spawn, "--max-num-seqs", "1", model="bench-model", speed=0.2)
    workload = build_workload(
        "shared-prefix",
        {"num_groups": 4, "prompts_per_group": 10, "question_len": 8, "output_len": 50},
        seed=1,
    )
    asked: list[tuple[int, bool]] = []

    def stop_when(record: RequestRecord, issued: int, arrivals_done: bool) -> str | None:
        asked.append((issued, arrivals_done))
        return "settled" if arrivals_done else None

    load = LoadSpec(mode="poisson", rates=(40.0,), duration_s=0.5, seed=3)
    started = time.monotonic()
    records, _ = run_sync(RunConfig(base_url=sim.url, stop_when=stop_when), workload, load)
    elapsed = time.monotonic() - started
    issued, arrivals_done = asked[-1]
    assert arrivals_done and issued >= 8, asked
    assert len(records) == len(asked) < issued  # the rest were cancelled, not recorded
    assert elapsed < 10, elapsed
