"""``kvgate sim --kv-events-fault``: the publisher drops, duplicates and reorders batches on
its live PUB socket, deterministically for a seed, while its replay buffer keeps every batch
in order. A real SUB socket on an ipc:// endpoint reads what goes out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq

from kvgate.cli import build_parser
from kvgate.kvcache.events import BlockStored, decode_seq
from kvgate.sim.config import settings_from_args
from kvgate.sim.publisher import PublishFaults, ZmqPublisher, parse_publish_faults


def _event(i: int) -> BlockStored:
    return BlockStored([i], None, list(range(16)), 16)


async def _publish(
    tmp_path: Path, faults: PublishFaults, batches: int
) -> tuple[list[int], ZmqPublisher]:
    """Publish ``batches`` batches; the seqs a subscriber received, in order."""
    endpoint = f"ipc://{tmp_path}/pub.sock"
    pub = ZmqPublisher(
        endpoint, "kv@x:1@m", faults=faults, replay_endpoint=f"ipc://{tmp_path}/replay.sock"
    )
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 2000)
    sub.connect(endpoint)
    try:
        async with asyncio.timeout(5):
            while pub.subscriptions() == 0:  # the SUB has joined: nothing lost to a slow join
                await asyncio.sleep(0.005)
        pub.start()
        for i in range(batches):
            pub.publish([_event(i)])
        async with asyncio.timeout(5):
            while pub.held:  # a batch held back by a reorder goes out on its own
                await asyncio.sleep(0.005)
        seqs = []
        for _ in range(pub.num_messages_sent):
            seqs.append(decode_seq(sub.recv_multipart()[1]))
        assert [seq for seq, _ in pub._buffer] == list(range(batches))  # replay keeps all
        return seqs, pub
    finally:
        sub.close(linger=0)
        await pub.close()


async def test_each_fault_alone(tmp_path: Path) -> None:
    seqs, pub = await _publish(tmp_path, PublishFaults(drop=1.0), 4)
    assert seqs == [] and pub.num_dropped == 4
    seqs, pub = await _publish(tmp_path, PublishFaults(dup=1.0), 3)
    assert seqs == [0, 0, 1, 1, 2, 2] and pub.num_duplicated == 3
    # adjacent batches swap; the last one held goes out alone after the hold time
    seqs, pub = await _publish(tmp_path, PublishFaults(reorder=1.0), 5)
    assert seqs == [1, 0, 3, 2, 4] and pub.num_reordered == 3


async def test_mixed_faults_are_deterministic_per_seed(tmp_path: Path) -> None:
    faults = parse_publish_faults("drop:0.2,dup:0.2,reorder:0.2")
    first, pub = await _publish(tmp_path, faults, 60)
    again, _ = await _publish(tmp_path, faults, 60)
    assert first == again
    assert pub.num_dropped and pub.num_duplicated and pub.num_reordered
    assert len(first) == 60 - pub.num_dropped + pub.num_duplicated
    assert sorted(set(first)) != list(range(60))  # something is missing


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drop", "expected KIND:PROBABILITY"),
        ("lose:0.1", "expected KIND:PROBABILITY"),
        ("drop:2", "expected a probability in 0..1"),
        ("drop:x", "expected a probability in 0..1"),
        ("drop:0.1,drop:0.2", "given twice"),
        ("drop:0.6,dup:0.6", "add up to more than 1"),
    ],
)
def test_bad_fault_specs_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_publish_faults(text)
    assert str(err.value).startswith("--kv-events-fault: ")


def test_the_flag_reaches_the_settings() -> None:
    args = build_parser().parse_args(["sim", "--kv-events-fault", "dup:0.5, reorder:0.25"])
    assert settings_from_args(args).kv_events_fault == PublishFaults(dup=0.5, reorder=0.25)
    args = build_parser().parse_args(["sim"])
    assert not settings_from_args(args).kv_events_fault.any
