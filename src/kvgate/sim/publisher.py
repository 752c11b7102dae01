"""KV-event publishing over ZMQ, as vLLM's ``ZmqEventPublisher`` does it.

- A PUB socket sends one 3-frame message per engine step that changed the cache:
  ``[topic, seq (8 bytes big-endian, from 0), msgpack EventBatch]`` (wire types in
  :mod:`kvgate.kvcache.events`, map layout by default as vLLM 0.32, array on request).
- The PUB **binds** when the endpoint contains ``*`` or ``::`` or is ``ipc://``/``inproc://``,
  and **connects** otherwise (one collector, many engines: llm-d's pattern).
- An optional replay ROUTER (``replay_endpoint``, always bound) answers a DEALER's
  ``[b"", start_seq]`` with every buffered batch whose seq >= start_seq, then an end marker
  with seq -1 and an empty payload. Frames follow what real vLLM 0.32 sent in
  shared/reference/vllm-cpu.md §6: ``[b"", topic, seq, payload]`` and ``[b"", b"", -1, b""]``.
- Optional faults on the live PUB path only (``--kv-events-fault``, :class:`PublishFaults`),
  for testing a router's intake: a batch dropped, sent twice, or held back and sent after
  the next one (adjacent batches swapped). The replay buffer always holds every batch in
  seq order, as a real publisher's does, so a router can repair what the faults took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import zmq
import zmq.asyncio

from kvgate.kvcache.events import (
    REPLAY_END_SEQ,
    EventBatch,
    KVCacheEvent,
    Layout,
    decode_seq,
    encode_batch,
    encode_seq,
)

__all__ = [
    "KVEventsConfig",
    "PublishFaults",
    "ZmqPublisher",
    "parse_kv_events_config",
    "parse_publish_faults",
]

log = logging.getLogger("kvgate.sim.publisher")


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    """vLLM's ``--kv-events-config`` fields (vllm/config/kv_events.py) that matter here."""

    enable_kv_cache_events: bool = False
    publisher: str = "zmq"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    topic: str = ""


def parse_kv_events_config(text: str) -> KVEventsConfig:
    """Parse vLLM's ``--kv-events-config`` JSON; raises ValueError naming the bad field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kv-events-config: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("--kv-events-config: expected a JSON object")
    known = {
        "enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint",
        "buffer_steps", "hwm", "max_queue_size", "topic",
    }  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"--kv-events-config: unknown field(s) {sorted(unknown)} (known: {sorted(known)})"
        )
    publisher = data.get("publisher", "zmq")
    if publisher not in ("zmq", "null"):
        raise ValueError(
            f"--kv-events-config.publisher: expected 'zmq' or 'null', got {publisher!r}"
        )
    return KVEventsConfig(
        enable_kv_cache_events=bool(data.get("enable_kv_cache_events", False)),
        publisher=publisher,
        endpoint=str(data.get("endpoint", "tcp://*:5557")),
        replay_endpoint=data.get("replay_endpoint") or None,
        buffer_steps=int(data.get("buffer_steps", 10_000)),
        hwm=int(data.get("hwm", 100_000)),
        topic=str(data.get("topic", "") or ""),
    )


@dataclass(frozen=True, slots=True)
class PublishFaults:
    """Per-batch probabilities of a fault on the live PUB path (each in 0..1, drawn in the
    order drop, dup, reorder; at most one per batch). ``reorder_hold_s``: how long a held
    batch waits for a next one before it goes out alone (so the stream always ends whole)."""

    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    reorder_hold_s: float = 0.02

    @property
    def any(self) -> bool:
        return self.drop > 0 or self.dup > 0 or self.reorder > 0


FAULT_KINDS = ("drop", "dup", "reorder")


def parse_publish_faults(text: str) -> PublishFaults:
    """``drop:0.2,dup:0.1,reorder:0.1`` (any subset); raises ValueError naming the part."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, sep, number = part.partition(":")
        if kind not in FAULT_KINDS or not sep:
            raise ValueError(
                f"--kv-events-fault: {part!r}: expected KIND:PROBABILITY with KIND one of "
                f"{', '.join(FAULT_KINDS)}"
            )
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise ValueError(f"--kv-events-fault: {part!r}: expected a probability in 0..1")
        if kind in values:
            raise ValueError(f"--kv-events-fault: {kind!r} given twice")
        values[kind] = value
    if sum(values.values()) > 1:
        raise ValueError(f"--kv-events-fault: {text!r}: the probabilities add up to more than 1")
    return PublishFaults(**values)


def binds(endpoint: str) -> bool:
    """vLLM's rule: bind for wildcard hosts and local transports, connect otherwise."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqPublisher:
    """Publishes KV-event batches; call :meth:`publish` from the event loop."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        *,
        layout: Layout = "map",
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
        data_parallel_rank: int = 0,
        faults: PublishFaults | None = None,
        seed: int = 0,
    ) -> None:
        self.topic = topic.encode()
        self.faults = faults or PublishFaults()
        self._rng = random.Random(seed)
        # a batch held back by a reorder fault, and the timer that sends it alone
        self._held: tuple[bytes, bytes] | None = None
        self._held_timer: asyncio.TimerHandle | None = None
        self.num_messages_sent = 0  # messages the PUB sent (a dup counts twice)
        self.num_dropped = 0
        self.num_duplicated = 0
        self.num_reordered = 0
        self.layout: Layout = layout
        self.data_parallel_rank = data_parallel_rank
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        # XPUB rather than vLLM's PUB: the same wire protocol for subscribers, and it lets the
        # simulator see subscriptions arrive, so tests and tools can wait until a router
        # listens instead of losing the first batches to ZMQ's slow-joiner window.
        self._pub = self._ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        self._pub.setsockopt(zmq.LINGER, 1000)
        if binds(endpoint):
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self.endpoint = endpoint
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, buffer_steps))
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._actx: zmq.asyncio.Context | None = None
        if replay_endpoint:
            self._actx = zmq.asyncio.Context()
            self._replay = self._actx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(replay_endpoint)
        self.num_batches = 0
        self._subscriptions = 0

    def start(self) -> None:
        if self._replay is not None and self._replay_task is None:
            self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[KVCacheEvent]) -> None:
        if not events:
            return
        batch = EventBatch(time.time(), list(events), self.data_parallel_rank)  # type: ignore[arg-type]
        payload = encode_batch(batch, self.layout)
        seq = self._seq
        self._seq += 1
        if self._replay is not None:
            self._buffer.append((seq, payload))
        self.num_batches += 1
        if self.faults.any:
            self._publish_with_faults(encode_seq(seq), payload)
        else:
            self._send(encode_seq(seq), payload)

    @property
    def held(self) -> int:
        """Batches held back by a reorder fault, not yet sent (0 or 1)."""
        return 0 if self._held is None else 1

    def _send(self, seq_frame: bytes, payload: bytes) -> None:
        try:
            self._pub.send_multipart((self.topic, seq_frame, payload), flags=zmq.NOBLOCK)
        except zmq.Again:  # high-water mark reached: dropped, as vLLM's publisher drops
            log.warning("KV-event batch %d dropped (PUB high-water mark)", decode_seq(seq_frame))
            return
        self.num_messages_sent += 1

    def _publish_with_faults(self, seq_frame: bytes, payload: bytes) -> None:
        held, self._held = self._held, None
        if held is not None and self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        draw = self._rng.random()
        faults = self.faults
        if draw < faults.drop:
            self.num_dropped += 1
        elif draw < faults.drop + faults.dup:
            self.num_duplicated += 1
            self._send(seq_frame, payload)
            self._send(seq_frame, payload)
        elif draw < faults.drop + faults.dup + faults.reorder and held is None:
            self.num_reordered += 1
            self._held = (seq_frame, payload)
            self._held_timer = asyncio.get_running_loop().call_later(
                faults.reorder_hold_s, self._release_held
            )
        else:
            self._send(seq_frame, payload)
        if held is not None:  # the batch held back goes out after the one that followed it
            self._send(*held)

    def _release_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, None
        if held is not None:
            self._send(*held)

    def subscriptions(self) -> int:
        """Subscriptions currently received from SUB sockets (subscribes minus unsubscribes)."""
        while True:
            try:
                msg = self._pub.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return self._subscriptions
            if msg[:1] == b"\x01":
                self._subscriptions += 1
            elif msg[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        sock = self._replay
        end = encode_seq(REPLAY_END_SEQ)
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                log.warning("replay request with %d frames ignored (want 3)", len(frames))
                continue
            client, _, start_frame = frames
            start = int.from_bytes(start_frame, "big", signed=True)
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await sock.send_multipart((client, b"", self.topic, encode_seq(seq), payload))
            await sock.send_multipart((client, b"", b"", end, b""))

    async def close(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._release_held()
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._replay is not None:
            self._replay.close(0)
        if self._actx is not None:
            self._actx.term()
        self._pub.close(linger=1000)
