"""``--prefix-caching-hash-algo sha256_cbor``: kvgate's hashing reproduces vLLM's, and the sim's.

One extra real replica (the shared pair uses the default ``sha256``), started for this
module only, while the pair idles.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvgate.engines import ReplicaSpec, Supervisor, plan_launch
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.kvcache.tokenize import Tokenizer
from support.vllm import (
    BLOCK_SIZE,
    MODEL_NAME,
    STARTUP_TIMEOUT_S,
    EventRecorder,
    VllmPair,
    get_text,
    iter_events,
    post_json,
    pytest_timeout_paused,
    unique_words,
    vllm_config,
)

pytestmark = pytest.mark.vllm

ALGO = "sha256_cbor"


@pytest.fixture(scope="module")
def cbor_replicas(
    vllm_pair: VllmPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[ReplicaSpec, EventRecorder]]]:
    run_dir = tmp_path_factory.mktemp("cbor")
    plans = {
        "vllm": plan_launch(
            vllm_config(run_dir / "vllm", prefix_caching_hash_algo=ALGO, cpus=(0, 1)), 1
        ),
        "sim": plan_launch(
            vllm_config(run_dir / "sim", engine="sim", prefix_caching_hash_algo=ALGO), 1
        ),
    }
    sups = {name: Supervisor(plan, progress=False) for name, plan in plans.items()}
    recorders: dict[str, EventRecorder] = {}
    try:
        for name, sup in sups.items():
            sup.start()
            connect = plans[name].replicas[0].kv_events_connect
            assert connect is not None
            recorders[name] = EventRecorder([connect])
        with pytest_timeout_paused():
            for sup in sups.values():
                sup.wait_ready_blocking(STARTUP_TIMEOUT_S)
        yield {name: (plans[name].replicas[0], recorders[name]) for name in plans}
    finally:
        for rec in recorders.values():
            rec.close()
        for sup in sups.values():
            sup.stop_blocking()


def test_sha256_cbor_block_hashes_match_kvgate_hashing(
    cbor_replicas: dict[str, tuple[ReplicaSpec, EventRecorder]], vllm_pair: VllmPair
) -> None:
    tokenizer = Tokenizer.from_path(vllm_pair.model_path)
    prompt = unique_words("cbor-hashes", 70)
    token_ids = tokenizer.encode(prompt)
    expected = [to_event_hash(h) for h in block_hashes(token_ids, BLOCK_SIZE, algo=ALGO)]
    default = [to_event_hash(h) for h in block_hashes(token_ids, BLOCK_SIZE, algo="sha256")]
    assert expected != default
    for name, (replica, recorder) in cbor_replicas.items():
        labels = get_text(replica.base_url + "/metrics")
        assert f'prefix_caching_hash_algo="{ALGO}"' in labels, name
        mark = recorder.mark()
        status, _ = post_json(
            replica.base_url + "/v1/completions",
            {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 1},
        )
        assert status == 200
        msgs = recorder.wait(
            lambda ms: any(e["type"] == "BlockStored" for e in iter_events(ms)), mark=mark
        )
        hashes = [
            h for e in iter_events(msgs) if e["type"] == "BlockStored" for h in e["block_hashes"]
        ]
        assert hashes[: len(expected)] == expected, f"{name}: {hashes} != {expected}"
