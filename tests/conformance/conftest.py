"""A ``kvgate sim`` replica configured like the shared real vLLM pair, for side-by-side checks.

The sim twin gets, through the same launcher, what replica 0 of ``vllm_pair`` got: served
model name, tokenizer and chat template (the prepared model folder), block size 32, the
``sha256`` block hash, a KV cache of the same number of blocks (80 MB of SmolLM2 KV = 108
blocks), max-model-len 2048, and KV events on its own PUB socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvgate.engines import EngineConfig, ReplicaSpec, Supervisor, plan_launch
from support.vllm import (
    BLOCK_SIZE,
    KV_CACHE_BYTES,
    MAX_MODEL_LEN,
    EventRecorder,
    VllmPair,
)


@dataclass
class Twins:
    """One real vLLM replica and one simulated replica configured like it."""

    vllm: ReplicaSpec
    sim: ReplicaSpec
    vllm_events: EventRecorder
    sim_events: EventRecorder
    model_path: Path

    @property
    def both(self) -> list[tuple[str, ReplicaSpec]]:
        return [("vllm", self.vllm), ("sim", self.sim)]

    def events(self, which: str) -> EventRecorder:
        return self.vllm_events if which == "vllm" else self.sim_events


@pytest.fixture(scope="session")
def twins(vllm_pair: VllmPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    run_dir = tmp_path_factory.mktemp("sim-twin")
    config = EngineConfig(
        engine="sim",
        model=vllm_pair.plan.model,
        run_dir=run_dir,
        block_size=BLOCK_SIZE,
        kv_cache_bytes=KV_CACHE_BYTES,
        max_model_len=MAX_MODEL_LEN,
        prefix_caching_hash_algo=vllm_pair.replicas[0].prefix_caching_hash_algo,
    )
    plan = plan_launch(config, 1)
    sup = Supervisor(plan, progress=False)
    sup.start()
    sim = plan.replicas[0]
    assert sim.kv_events_connect is not None
    recorder = EventRecorder([sim.kv_events_connect])
    try:
        sup.wait_ready_blocking()
        yield Twins(
            vllm=vllm_pair.replicas[0],
            sim=sim,
            vllm_events=vllm_pair.events,
            sim_events=recorder,
            model_path=vllm_pair.model_path,
        )
    finally:
        recorder.close()
        sup.stop_blocking()
