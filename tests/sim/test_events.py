"""KV events over real ZMQ from a real ``kvgate sim``: decoded back into exactly the blocks the
replica stored and removed, in both layouts, with vLLM's hashes, topic and replay socket."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from kvgate.kvcache.events import BlockRemoved, BlockStored, decode_batch, decode_seq
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from support.procs import Proc, free_port, wait_until
from support.sim import start_sim


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("layout", ["map", "array"])
def test_events_decode_into_exactly_the_blocks_stored_and_removed(
    module_spawn: Callable[..., Proc], layout: str
) -> None:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.setsockopt(zmq.LINGER, 0)
    # The subscriber binds and the replica connects (a host endpoint), llm-d's pattern. A
    # bound SUB sends its subscription to a new peer only while its owner polls it, so a
    # thread receives all along, as a real subscriber does.
    ev_port = free_port()
    sub.bind(f"tcp://127.0.0.1:{ev_port}")
    received: list[list[bytes]] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            if sub.poll(20):
                received.append(sub.recv_multipart())

    collector = threading.Thread(target=collect)
    collector.start()
    replay_port = free_port()
    sim = start_sim(
        module_spawn,
        model="ev",
        speed=50,
        num_gpu_blocks=12,
        kv_events_endpoint=f"tcp://127.0.0.1:{ev_port}",
        kv_events_replay_endpoint=f"tcp://127.0.0.1:{replay_port}",
        kv_events_format=layout,
        prefix_caching_hash_algo="sha256_cbor",
    )
    try:
        prompts = [
            [500 + i] * 20 + list(range(100, 120)) for i in range(5)
        ]  # 40 tokens = 2.5 blocks
        for prompt in prompts:
            post(
                sim.url + "/v1/completions",
                {"model": "ev", "prompt": prompt, "max_tokens": 10, "ignore_eos": True},
            )
        # Every batch is published before the response that caused it, in order: once the
        # last request's decode block (the child of its second prompt block) is in, all are.
        last_parent = to_event_hash(block_hashes(prompts[-1], 16, algo="sha256_cbor")[1])

        def last_block_seen() -> bool:
            return any(
                isinstance(e, BlockStored) and e.parent_block_hash == last_parent
                for _, _, payload in list(received)
                for e in decode_batch(payload).events
            )

        wait_until(last_block_seen, timeout_s=10, what="the last request's KV events")
        stop.set()
        collector.join()
        batches = []
        for topic, seq, payload in received:
            assert topic == f"kv@127.0.0.1:{sim.port}@ev".encode()
            batches.append((decode_seq(seq), decode_batch(payload), payload))
        assert [b[0] for b in batches] == list(range(len(batches)))
        if layout == "map":
            assert batches[0][2][:2] == b"\x93\xcb"  # [ts(float64), events, dp_rank]
        live: dict[int, list[int]] = {}
        removed = 0
        for _, batch, _ in batches:
            assert batch.data_parallel_rank == 0
            for ev in batch.events:
                if isinstance(ev, BlockStored):
                    assert ev.medium == "GPU" and ev.block_size == 16
                    for i, h in enumerate(ev.block_hashes):
                        assert h not in live
                        live[int(h)] = ev.token_ids[i * 16 : (i + 1) * 16]
                elif isinstance(ev, BlockRemoved):
                    for h in ev.block_hashes:
                        del live[int(h)]
                        removed += 1
        assert removed > 0  # 12 blocks cannot hold 5 requests' 3 blocks each
        # Each request's blocks (prompt + generated tokens) hash to what the events said.
        every: set[int] = set()
        for prompt in prompts:
            every.update(to_event_hash(h) for h in block_hashes(prompt, 16, algo="sha256_cbor"))
        assert every <= {
            int(h)
            for _, b, _ in batches
            for e in b.events
            if isinstance(e, BlockStored)
            for h in e.block_hashes
        }
        # What is still live is exactly what the replica still has: a repeat of the last prompt hits it.
        last = post(
            sim.url + "/v1/completions", {"model": "ev", "prompt": prompts[-1], "max_tokens": 1}
        )
        first_block = to_event_hash(block_hashes(prompts[-1], 16, algo="sha256_cbor")[0])
        assert first_block in live
        assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == 32

        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{replay_port}")
        dealer.send_multipart([b"", (1).to_bytes(8, "big")])
        replayed = []
        while dealer.poll(5000):
            frames = dealer.recv_multipart()
            seq = decode_seq(frames[2])
            if seq == -1:
                assert frames[1] == b"" and frames[3] == b""
                break
            replayed.append(seq)
            assert frames[1] == f"kv@127.0.0.1:{sim.port}@ev".encode()
        assert replayed[: len(batches) - 1] == list(range(1, len(batches)))
        dealer.close()
    finally:
        stop.set()
        collector.join()
        sub.close()
