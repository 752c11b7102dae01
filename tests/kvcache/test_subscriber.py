"""The KV-event subscriber against real ZMQ publishers on loopback: order, gaps, restarts,
replay repair, late join, purge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import zmq
import zmq.asyncio

from kvgate.kvcache import events
from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.index import KVBlockIndex
from kvgate.kvcache.subscriber import KVEventSubscriber
from kvgate.sim.publisher import ZmqPublisher
from support.procs import free_port

EP = "127.0.0.1:9001"
BS = 4


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.005)


class TestPublisher:
    """A vLLM-style publisher whose live sends can be skipped (to make gaps).

    XPUB instead of PUB so the test can wait for the subscription to arrive (no slow-joiner
    loss); a ROUTER answers replay requests from every batch ever made, like vLLM's buffer.
    """

    __test__ = False

    def __init__(self, ctx: zmq.asyncio.Context, address: str, *, bind: bool, replay: str | None,
                 topic: str = events.make_topic(EP, "m")) -> None:  # fmt: skip
        self.topic = topic
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if bind:
            self.pub.bind(address)
        else:
            self.pub.connect(address)
        self.buffer: list[tuple[int, bytes]] = []
        self.router: zmq.asyncio.Socket | None = None
        self.task: asyncio.Task[None] | None = None
        if replay:
            self.router = ctx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            self.router.bind(replay)
            self.task = asyncio.create_task(self._serve())

    async def subscribed(self) -> None:
        frame = await asyncio.wait_for(self.pub.recv(), 5.0)
        assert frame == b"\x01kv@"

    async def send(self, seq: int, *evs: object, live: bool = True) -> None:
        payload = events.encode_batch(EventBatch(time.time(), list(evs)))  # type: ignore[arg-type]
        self.buffer.append((seq, payload))
        if live:
            await self.pub.send_multipart([self.topic.encode(), events.encode_seq(seq), payload])

    async def _serve(self) -> None:
        assert self.router is not None
        while True:
            client, _, start = await self.router.recv_multipart()
            first = events.decode_seq(start)
            for seq, payload in self.buffer:
                if seq >= first:
                    await self.router.send_multipart(
                        [client, b"", self.topic.encode(), events.encode_seq(seq), payload]
                    )
            await self.router.send_multipart([client, b"", b"", events.encode_seq(-1), b""])

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        if self.router is not None:
            self.router.close(0)
        self.pub.close(0)


def _block(i: int, parent: int | None = None) -> BlockStored:
    """Block i: hash i+1, tokens [i]*BS, chained on ``parent`` (a hash)."""
    return BlockStored([i + 1], parent, [i] * BS, BS, medium="GPU")


def _keys(n: int, index: KVBlockIndex) -> list[int]:
    return list(index.request_keys([t for i in range(n) for t in [i] * BS]))


def _held(index: KVBlockIndex, n: int = 8, endpoint: str = EP) -> int:
    return index.match(_keys(n, index), [endpoint]).blocks.get(endpoint, 0)


@pytest.fixture
async def ctx() -> zmq.asyncio.Context:
    context = zmq.asyncio.Context()
    yield context
    context.term()


async def _setup(ctx: zmq.asyncio.Context, *, replay: bool, timeout_s: float = 2.0
                 ) -> tuple[KVBlockIndex, KVEventSubscriber, TestPublisher]:  # fmt: skip
    index = KVBlockIndex(block_size=BS)
    address = f"tcp://127.0.0.1:{free_port()}"
    replay_address = f"tcp://127.0.0.1:{free_port()}" if replay else None
    sub = KVEventSubscriber(
        index,
        bind=address,
        replay_endpoints={EP: replay_address} if replay_address else None,
        replay_timeout_s=timeout_s,
    )
    await sub.start()
    pub = TestPublisher(ctx, address, bind=False, replay=replay_address)
    await pub.subscribed()
    return index, sub, pub


async def test_in_order_batches_build_the_index(ctx: zmq.asyncio.Context) -> None:
    index, sub, pub = await _setup(ctx, replay=False)
    try:
        for i in range(4):
            await pub.send(i, _block(i, i if i else None))
        await _until(lambda: sub.last_seq(EP) == 3, "seq 3 applied")
        assert _held(index) == 4
        await pub.send(4, BlockRemoved([3], "GPU"))  # block 2
        await _until(lambda: sub.last_seq(EP) == 4, "seq 4 applied")
        assert _held(index) == 2
        assert sub.stats.gaps == 0 and sub.stats.batches_applied == 5
        assert sub.bound_address is not None and sub.bound_address.startswith("tcp://127.0.0.1:")
    finally:
        await pub.close()
        await sub.stop()


async def test_gap_without_replay_drops_the_endpoint(ctx: zmq.asyncio.Context) -> None:
    index, sub, pub = await _setup(ctx, replay=False)
    try:
        for i in range(3):
            await pub.send(i, _block(i, i if i else None))
        await pub.send(3, BlockRemoved([1], "GPU"), live=False)  # lost: would remove block 0
        await pub.send(4, _block(3, 3))
        await _until(lambda: sub.last_seq(EP) == 4, "seq 4 applied")
        assert sub.stats.gaps == 1
        # entries dropped (the lost removal must not leave a false hit on block 0)
        assert _held(index) == 0
        # the batch after the gap is real and is kept: engine translations outlive entries
        assert index.holders(_keys(4, index)[3]) == {EP: ["gpu"]}
        assert index.num_entries == 1
    finally:
        await pub.close()
        await sub.stop()


async def test_gap_is_repaired_through_the_replay_socket(ctx: zmq.asyncio.Context) -> None:
    index, sub, pub = await _setup(ctx, replay=True)
    try:
        await pub.send(0, _block(0), _block(1, 1))
        await pub.send(1, _block(2, 2), live=False)
        await pub.send(2, BlockRemoved([2], "GPU"), live=False)  # block 1 evicted
        await pub.send(3, _block(3, 3))  # chains on block 2, known only from the replay
        await _until(lambda: sub.last_seq(EP) == 3, "seq 3 applied")
        assert sub.stats.gaps == 1 and sub.stats.replays_ok == 1
        assert sub.stats.replayed_batches == 2
        assert _held(index) == 1  # block 1 was removed in the replayed history
        keys = _keys(4, index)
        assert index.holders(keys[3]) == {EP: ["gpu"]}
        assert index.num_entries == 3
    finally:
        await pub.close()
        await sub.stop()


async def test_failed_replay_drops_the_endpoint(ctx: zmq.asyncio.Context) -> None:
    index = KVBlockIndex(block_size=BS)
    address = f"tcp://127.0.0.1:{free_port()}"
    dead_replay = f"tcp://127.0.0.1:{free_port()}"  # nobody answers
    sub = KVEventSubscriber(
        index, bind=address, replay_endpoints={EP: dead_replay}, replay_timeout_s=0.2
    )
    await sub.start()
    pub = TestPublisher(ctx, address, bind=False, replay=None)
    await pub.subscribed()
    try:
        await pub.send(0, _block(0))
        await _until(lambda: sub.last_seq(EP) == 0, "seq 0")
        assert _held(index) == 1
        await pub.send(2, _block(5))
        await _until(lambda: sub.last_seq(EP) == 2, "seq 2 after the failed replay")
        assert sub.stats.replays_failed == 1
        assert _held(index) == 0
        assert index.match(index.request_keys([5] * BS), [EP]).blocks == {EP: 1}
    finally:
        await pub.close()
        await sub.stop()


async def test_restart_drops_entries_and_starts_over(ctx: zmq.asyncio.Context) -> None:
    index, sub, pub = await _setup(ctx, replay=False)
    try:
        await pub.send(0, _block(0))
        await pub.send(1, _block(1, 1))
        await _until(lambda: sub.last_seq(EP) == 1, "seq 1")
        assert _held(index) == 2
        await pub.send(0, _block(7))  # a new publisher process counts from 0 again
        await _until(lambda: sub.last_seq(EP) == 0, "seq 0 again")
        assert sub.stats.restarts == 1
        assert _held(index) == 0
    finally:
        await pub.close()
        await sub.stop()


async def test_a_duplicate_or_late_batch_is_ignored_not_taken_for_a_restart(
    ctx: zmq.asyncio.Context,
) -> None:
    index, sub, pub = await _setup(ctx, replay=False)
    try:
        await pub.send(0, _block(0))
        await pub.send(1, _block(1, 1))
        await pub.send(2, _block(2, 2))
        await _until(lambda: sub.last_seq(EP) == 2, "seq 2")
        assert _held(index) == 3
        await pub.send(1, _block(1, 1))  # sent twice
        await pub.send(2, _block(2, 2))
        await pub.send(3, _block(3, 3))
        await _until(lambda: sub.last_seq(EP) == 3, "seq 3 after the duplicates")
        assert sub.stats.stale_batches == 2
        assert sub.stats.restarts == 0
        assert _held(index) == 4  # nothing dropped
    finally:
        await pub.close()
        await sub.stop()


async def test_late_join_replays_history(ctx: zmq.asyncio.Context) -> None:
    replay_address = f"tcp://127.0.0.1:{free_port()}"
    pub_address = f"tcp://127.0.0.1:{free_port()}"
    pub = TestPublisher(ctx, pub_address, bind=True, replay=replay_address)
    index = KVBlockIndex(block_size=BS)
    sub = KVEventSubscriber(index, bind=None, replay_endpoints={EP: replay_address})
    try:
        await pub.send(0, _block(0), live=False)  # before the subscriber existed
        await pub.send(1, _block(1, 1), live=False)
        await sub.start()
        sub.connect(EP, pub_address)
        await pub.subscribed()
        await pub.send(2, _block(2, 2))
        await _until(lambda: sub.last_seq(EP) == 2, "seq 2")
        assert sub.stats.replays_ok == 1 and sub.stats.replayed_batches == 2
        assert _held(index) == 3
    finally:
        await pub.close()
        await sub.stop()


async def test_connect_mode_with_the_simulators_publisher_and_purge(
    ctx: zmq.asyncio.Context,
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    # the sim's PUB binds (vLLM's rule for a wildcard host); the topic names another id,
    # but in connect mode the endpoint is the one the SUB was opened for
    pub = ZmqPublisher(address.replace("127.0.0.1", "*"), "kv@elsewhere:1@m", layout="array")
    index = KVBlockIndex(block_size=BS)
    sub = KVEventSubscriber(index, bind=None)
    await sub.start()
    sub.connect(EP, address)
    try:
        # PUB/SUB joins asynchronously: publish until the first batch arrives
        async def first() -> None:
            while sub.last_seq(EP) is None:
                pub.publish([_block(0)])
                await asyncio.sleep(0.02)

        await asyncio.wait_for(first(), 5.0)
        assert _held(index) == 1
        sent = pub.num_batches
        pub.publish([_block(1, 1)])
        await _until(lambda: sub.last_seq(EP) == sent, "the next batch")
        assert _held(index) == 2
        assert index.endpoints() == [EP]
        sub.endpoint_removed(EP)
        assert index.endpoints() == [] and _held(index) == 0
        assert sub.stats.dropped_endpoints == 1
    finally:
        await pub.close()
        await sub.stop()


async def test_all_blocks_cleared_and_bad_messages(ctx: zmq.asyncio.Context) -> None:
    index, sub, pub = await _setup(ctx, replay=False)
    try:
        await pub.send(0, _block(0))
        await pub.send(1, AllBlocksCleared())
        await _until(lambda: sub.last_seq(EP) == 1, "seq 1")
        assert _held(index) == 0 and index.stats.events_cleared == 1
        # a purged endpoint's stale batches are ignored until it starts over at seq 0
        sub.endpoint_removed(EP)
        await pub.send(2, _block(0))
        await pub.pub.send_multipart([b"kv@no-model", events.encode_seq(0), b"x"])  # bad topic
        await pub.pub.send_multipart([b"kv@a:1@m", b"\x00", b"x"])  # bad seq
        await pub.pub.send_multipart([b"kv@a:1@m", events.encode_seq(0), b"\xc1"])  # bad payload
        await _until(lambda: sub.stats.bad_messages == 3, "3 bad messages counted")
        assert _held(index) == 0
        await pub.send(0, _block(0))
        await _until(lambda: _held(index) == 1, "fresh stream accepted")
    finally:
        await pub.close()
        await sub.stop()


async def test_bind_conflict_is_an_error_naming_the_address() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    first = KVEventSubscriber(KVBlockIndex(), bind=address)
    await first.start()
    try:
        second = KVEventSubscriber(KVBlockIndex(), bind=address)
        with pytest.raises(OSError, match=address):
            await second.start()
    finally:
        await first.stop()


async def _bound(ctx: zmq.asyncio.Context, *topics: str
                 ) -> tuple[KVBlockIndex, KVEventSubscriber, list[TestPublisher]]:  # fmt: skip
    index = KVBlockIndex(block_size=BS)
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = KVEventSubscriber(index, bind=address)
    await sub.start()
    pubs = [TestPublisher(ctx, address, bind=False, replay=None, topic=t) for t in topics]
    for pub in pubs:
        await pub.subscribed()
    return index, sub, pubs


async def test_a_pod_ip_topic_matches_every_endpoint_at_that_ip(
    ctx: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """llm-d's guides publish ``kv@<pod-ip>@<model>``: both ranks at 127.0.0.5 read it, the
    host:port topic of 127.0.0.6:8000 still keys by host:port, and nothing is unmatched."""
    index, sub, (ip_pub, hp_pub) = await _bound(
        ctx, events.make_topic("127.0.0.5", "m"), events.make_topic("127.0.0.6:8000", "m")
    )
    pool = frozenset({"127.0.0.5:8000", "127.0.0.5:8001", "127.0.0.6:8000", "127.0.0.7:8000"})
    sub.set_endpoints(pool)
    try:
        for i in range(3):
            await ip_pub.send(i, _block(i, i if i else None))
        await hp_pub.send(0, _block(0))
        await _until(lambda: sub.last_seq("127.0.0.5") == 2, "pod-IP stream applied")
        await _until(lambda: sub.last_seq("127.0.0.6:8000") == 0, "host:port stream applied")
        ids = {hp: sub.index_id(hp.rsplit(":", 1)[0], hp) for hp in sorted(pool)}
        assert ids == {
            "127.0.0.5:8000": "127.0.0.5",
            "127.0.0.5:8001": "127.0.0.5",
            "127.0.0.6:8000": "127.0.0.6:8000",
            "127.0.0.7:8000": "127.0.0.7:8000",
        }
        held = index.match(_keys(8, index), list(ids.values())).blocks
        assert [held.get(ids[hp], 0) for hp in sorted(pool)] == [3, 3, 1, 0]
        assert sub.stats.unmatched_messages == 0 and "names no endpoint" not in caplog.text
    finally:
        await ip_pub.close()
        await hp_pub.close()
        await sub.stop()


async def test_a_topic_matching_no_endpoint_is_counted_and_logged_once(
    ctx: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    _, sub, (stray, wrong_port) = await _bound(
        ctx, events.make_topic("10.9.9.9", "m"), events.make_topic("127.0.0.5:9999", "m")
    )
    sub.set_endpoints(frozenset({"127.0.0.5:8000"}))
    try:
        for i in range(3):
            await stray.send(i, _block(i, i if i else None))
            await wrong_port.send(i, _block(i, i if i else None))
        await _until(lambda: sub.stats.unmatched_messages == 6, "six unmatched batches")
        lines = [r.getMessage() for r in caplog.records if "names no endpoint" in r.getMessage()]
        assert len(lines) == 2  # once per topic
        assert "kv@10.9.9.9@m" in lines[0] + lines[1] and "127.0.0.5:8000" in lines[0]
        assert sub.index_id("127.0.0.5", "127.0.0.5:8000") == "127.0.0.5:8000"
    finally:
        await stray.close()
        await wrong_port.close()
        await sub.stop()
