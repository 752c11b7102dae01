"""KV-event intake: ZMQ SUB sockets feeding a :class:`KVBlockIndex`, off the request path.

Two ways to meet the engines' publishers (shared/reference/llmd.md §7-8):

- **bind** (llm-d's default): one SUB binds ``tcp://*:5557`` and every vLLM PUB connects to
  it; the endpoint is taken from the topic ``kv@<host:port>@<model>`` (messages whose topic
  does not have that shape are dropped and counted). llm-d's guides publish the pod IP only
  (``kv@<pod-ip>@<model>``): such a stream is indexed under the IP, and every endpoint at
  that address (all its ranks/ports) is looked up under it (:meth:`KVEventSubscriber.index_id`).
  Once the pool's endpoints are known (:meth:`KVEventSubscriber.set_endpoints`), a topic
  naming none of them is counted (``unmatched_messages``) and logged once per topic;
- **connect** (llm-d's ``discoverPods``, or vLLM PUBs that bind): one SUB per publisher,
  added with :meth:`KVEventSubscriber.connect`; the endpoint is the one it was added for.

Per endpoint, batches are applied in seq order. A seq jump forward is a **gap** (the SUB
dropped messages at its high-water mark, or the subscriber joined late); seq 0 after others,
or a seq far below the last one, is a **restart** (a new publisher process counts from 0
again, with an empty cache); a seq at most ``STALE_WINDOW`` at or below the last one is a
**stale** batch (sent twice, or overtaken by its successor) and is ignored: counting it as a
restart dropped a replica's whole index on every duplicate. A gap is repaired through the endpoint's replay socket when one is known (a DEALER
sends ``[b"", start_seq]`` and receives ``[b"", topic, seq, payload]`` until seq -1), while
live batches for that endpoint wait in order; when there is no replay socket, or the replay
cannot cover the gap in time, the endpoint's entries are dropped so the index never claims
blocks it cannot vouch for, and it rebuilds from the next events. A restart drops the
endpoint's entries too (its engine lost them).

Everything runs as tasks on the serving event loop; the index is only touched here and by
the scheduler on the same loop, so no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import zmq
import zmq.asyncio

from kvgate.kvcache.events import (
    DEFAULT_TOPIC_PREFIX,
    REPLAY_END_SEQ,
    BatchDecoder,
    decode_seq,
    encode_seq,
    parse_topic,
)
from kvgate.kvcache.index import KVBlockIndex
from kvgate.kvcache.metrics import track_subscriber

__all__ = ["DEFAULT_ZMQ_ENDPOINT", "KVEventSubscriber", "SubscriberStats", "host_of"]

log = logging.getLogger("kvgate.kvcache.subscriber")

#: llm-d's default: the router binds and every engine connects.
DEFAULT_ZMQ_ENDPOINT = "tcp://*:5557"


#: How far below the last seq a batch may arrive and still count as stale, not as a restart.
STALE_WINDOW = 1024


@dataclass(slots=True)
class SubscriberStats:
    messages: int = 0
    batches_applied: int = 0
    bad_messages: int = 0  # wrong frame count, bad topic or seq, undecodable payload
    gaps: int = 0
    restarts: int = 0
    stale_batches: int = 0  # duplicates and late batches, seq just at or below the last
    replays_ok: int = 0
    replays_failed: int = 0
    replayed_batches: int = 0
    dropped_endpoints: int = 0  # entries dropped: gap without repair, restart, purge
    unmatched_messages: int = 0  # batches whose topic names no known endpoint (still indexed)


@dataclass(slots=True)
class _Stream:
    """Per-endpoint ordering state."""

    decoder: BatchDecoder = field(default_factory=BatchDecoder)
    last_seq: int | None = None
    repairing: bool = False
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, payload) in order
    replay: str | None = None  # the endpoint's replay ROUTER address, if known


def _has_port(endpoint: str) -> bool:
    """``host:port`` or ``[v6]:port`` (a bare IPv6 address has colons but no port)."""
    if endpoint.startswith("["):
        return "]:" in endpoint
    return endpoint.count(":") == 1


def host_of(hostport: str) -> str:
    """``10.0.0.5:8000`` -> ``10.0.0.5``; ``[fd00::1]:8000`` -> ``fd00::1``."""
    host = hostport.rsplit(":", 1)[0] if _has_port(hostport) else hostport
    return host.strip("[]")


class KVEventSubscriber:
    """Feeds ``index`` from ZMQ; see the module docstring.

    ``bind``: the address the shared SUB binds (None: connect mode only).
    ``replay_endpoints``: endpoint id -> replay ROUTER address, for gap repair.
    """

    def __init__(
        self,
        index: KVBlockIndex,
        *,
        bind: str | None = DEFAULT_ZMQ_ENDPOINT,
        topic_filter: str = DEFAULT_TOPIC_PREFIX,
        replay_endpoints: Mapping[str, str] | None = None,
        replay_timeout_s: float = 2.0,
        hwm: int = 100_000,
    ) -> None:
        self.index = index
        self.bind = bind
        self.topic_filter = topic_filter
        self.replay_timeout_s = replay_timeout_s
        self.hwm = hwm
        self.stats = SubscriberStats()
        self._replay_endpoints = dict(replay_endpoints or {})
        self._streams: dict[str, _Stream] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._bound: zmq.asyncio.Socket | None = None
        self._connected: dict[str, tuple[zmq.asyncio.Socket, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound_task: asyncio.Task[None] | None = None
        self._removed: set[str] = set()
        # pod-IP-only topic ids seen (``kv@10.0.0.5@m``): endpoints at that address read them
        self._host_ids: set[str] = set()
        # the pool's endpoint ids (host:port) and their hosts, for matching topics
        self._known: frozenset[str] = frozenset()
        self._known_hosts: frozenset[str] = frozenset()
        self._unmatched_logged: set[str] = set()
        self.bound_address: str | None = None  # the resolved address once bound
        track_subscriber(self)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._ctx is not None:
            return
        self._ctx = zmq.asyncio.Context()
        if self.bind:
            sock = self._sub_socket()
            try:
                sock.bind(self.bind)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                self._ctx.term()
                self._ctx = None
                raise OSError(f"KV events: cannot bind {self.bind}: {exc}") from exc
            self._bound = sock
            self.bound_address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._bound_task = asyncio.create_task(self._receive(sock, None))
            log.info(
                "KV events: SUB bound to %s (topic filter %r)",
                self.bound_address,
                self.topic_filter,
            )

    async def stop(self) -> None:
        tasks = [t for t in (self._bound_task,) if t is not None]
        tasks += [task for _, task in self._connected.values()]
        tasks += list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._bound is not None:
            self._bound.close(linger=0)
        for sock, _ in self._connected.values():
            sock.close(linger=0)
        self._connected.clear()
        self._bound = None
        self._bound_task = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _sub_socket(self) -> zmq.asyncio.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic_filter.encode())
        return sock

    # --- publishers -----------------------------------------------------------------------------

    def connect(self, endpoint: str, address: str, replay: str | None = None) -> None:
        """Subscribe to the PUB of ``endpoint`` at ``address`` (connect mode). Needs start()."""
        if self._ctx is None:
            raise RuntimeError("KVEventSubscriber.connect before start()")
        self._removed.discard(endpoint)
        if replay:
            self._replay_endpoints[endpoint] = replay
        if endpoint in self._connected:
            return
        sock = self._sub_socket()
        sock.connect(address)
        task = asyncio.create_task(self._receive(sock, endpoint))
        self._connected[endpoint] = (sock, task)
        log.info("KV events: SUB connected to %s for %s", address, endpoint)

    def set_replay_endpoint(self, endpoint: str, address: str | None) -> None:
        if address:
            self._replay_endpoints[endpoint] = address
        else:
            self._replay_endpoints.pop(endpoint, None)

    def endpoint_removed(self, endpoint: str) -> None:
        """The endpoint left the pool: stop listening to it and drop what it held."""
        conn = self._connected.pop(endpoint, None)
        if conn is not None:
            sock, task = conn
            task.cancel()
            sock.close(linger=0)
        self._streams.pop(endpoint, None)
        if endpoint in self.index.endpoints():
            self.stats.dropped_endpoints += 1
        self.index.drop_endpoint(endpoint)
        # Late messages still in flight on the shared SUB must not resurrect it; it is
        # accepted again once it publishes from a fresh stream (seq 0) or is re-added.
        self._removed.add(endpoint)

    # --- topics -> endpoints --------------------------------------------------------------------

    def set_endpoints(self, hostports: frozenset[str]) -> None:
        """The pool's endpoints (``host:port``) as the owner knows them; topics are matched
        against these. Cheap to call again with the same set."""
        if hostports == self._known:
            return
        self._known = hostports
        self._known_hosts = frozenset(host_of(hp) for hp in hostports)

    def index_id(self, address: str, hostport: str) -> str:
        """The index id holding ``hostport``'s blocks: ``hostport`` itself, or its bare
        ``address`` when only pod-IP topics (``kv@<ip>@<model>``) were seen for it."""
        if address in self._host_ids and hostport not in self._streams:
            return address
        return hostport

    def _check_topic(self, endpoint: str, topic: bytes) -> None:
        """Count (and log once) a topic naming no known endpoint; before any endpoint is
        known nothing can be judged."""
        if not self._known:
            return
        if endpoint in self._known or (
            endpoint in self._host_ids and endpoint in self._known_hosts
        ):
            return
        self.stats.unmatched_messages += 1
        if endpoint not in self._unmatched_logged:
            self._unmatched_logged.add(endpoint)
            log.warning(
                "KV events: topic %r names no endpoint of the pool (known: %s); its blocks are "
                "indexed under %r and match no candidate until such an endpoint joins",
                topic.decode("utf-8", "replace"),
                ", ".join(sorted(self._known)[:8]),
                endpoint,
            )

    def last_seq(self, endpoint: str) -> int | None:
        """The seq of the last batch applied for ``endpoint`` (None before the first)."""
        stream = self._streams.get(endpoint)
        return None if stream is None else stream.last_seq

    def last_seqs(self) -> dict[str, int]:
        """Endpoint -> seq of the last batch applied, for endpoints with one."""
        return {e: s.last_seq for e, s in self._streams.items() if s.last_seq is not None}

    # --- receive --------------------------------------------------------------------------------

    async def _receive(self, sock: zmq.asyncio.Socket, endpoint: str | None) -> None:
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:  # socket closed under us or context gone
                log.warning("KV events: receive failed (%s); stopping this socket", exc)
                return
            try:
                self.on_message(frames, endpoint)
            except Exception:  # never let one bad batch kill the intake
                self.stats.bad_messages += 1
                log.exception("KV events: failed to apply a batch")

    def on_message(self, frames: list[bytes], endpoint: str | None = None) -> None:
        """Handle one ``[topic, seq, payload]`` message (``endpoint`` overrides the topic)."""
        self.stats.messages += 1
        if len(frames) != 3:
            self.stats.bad_messages += 1
            return
        topic, seq_frame, payload = frames
        if endpoint is None:
            parsed = parse_topic(topic)
            if parsed is None:
                self.stats.bad_messages += 1
                return
            endpoint = parsed[0]
            if not _has_port(endpoint):
                self._host_ids.add(endpoint.strip("[]"))
                endpoint = endpoint.strip("[]")
            self._check_topic(endpoint, topic)
        try:
            seq = decode_seq(seq_frame)
        except ValueError:
            self.stats.bad_messages += 1
            return
        if endpoint in self._removed:
            if seq != 0:
                return
            self._removed.discard(endpoint)
        self._on_batch(endpoint, seq, payload)

    def _stream(self, endpoint: str) -> _Stream:
        stream = self._streams.get(endpoint)
        if stream is None:
            stream = _Stream()
            self._streams[endpoint] = stream
        return stream

    def _on_batch(self, endpoint: str, seq: int, payload: bytes) -> None:
        stream = self._stream(endpoint)
        if stream.repairing:
            stream.pending.append((seq, payload))
            return
        last = stream.last_seq
        if (
            last is None
            and seq > 0
            and endpoint in self._replay_endpoints
            and self._ctx is not None
        ):
            # Joined late: fetch whatever history the publisher still buffers.
            self._start_repair(endpoint, stream, 0, seq, payload, late_join=True)
            return
        if last is not None and seq != last + 1:
            if seq <= last and seq != 0 and last - seq <= STALE_WINDOW:
                # a batch sent twice, or overtaken by its successor (ZMQ may reorder across
                # reconnects): what it says was applied, or repaired/dropped at the gap
                self.stats.stale_batches += 1
                return
            if seq <= last:
                self.stats.restarts += 1
                log.info(
                    "KV events: %s restarted (seq %d after %d); dropping its entries",
                    endpoint,
                    seq,
                    last,
                )
                self._drop_entries(endpoint)
            else:
                self.stats.gaps += 1
                replay = self._replay_endpoints.get(endpoint)
                if replay is not None and self._ctx is not None:
                    log.info(
                        "KV events: %s gap %d..%d; replaying from %s",
                        endpoint,
                        last + 1,
                        seq - 1,
                        replay,
                    )
                    self._start_repair(endpoint, stream, last + 1, seq, payload, late_join=False)
                    return
                log.info(
                    "KV events: %s gap %d..%d and no replay; dropping its entries",
                    endpoint,
                    last + 1,
                    seq - 1,
                )
                self._drop_entries(endpoint)
        self._apply(endpoint, stream, seq, payload)

    def _apply(self, endpoint: str, stream: _Stream, seq: int, payload: bytes) -> None:
        stream.last_seq = seq
        try:
            batch = stream.decoder.decode(payload)
        except (msgspec.DecodeError, ValueError):
            self.stats.bad_messages += 1
            # An undecodable batch is a hole in the endpoint's history, like a gap.
            self._drop_entries(endpoint)
            return
        self.index.apply_batch(endpoint, batch, time.time())
        self.stats.batches_applied += 1

    def _drop_entries(self, endpoint: str) -> None:
        if endpoint in self.index.endpoints():
            self.stats.dropped_endpoints += 1
        self.index.drop_endpoint(endpoint)

    # --- replay ---------------------------------------------------------------------------------

    def _start_repair(
        self,
        endpoint: str,
        stream: _Stream,
        start: int,
        seq: int,
        payload: bytes,
        *,
        late_join: bool,
    ) -> None:
        stream.repairing = True
        stream.pending.append((seq, payload))
        address = self._replay_endpoints[endpoint]
        task = asyncio.create_task(self._repair(endpoint, stream, start, address, late_join))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(
        self, endpoint: str, stream: _Stream, start: int, address: str, late_join: bool
    ) -> None:
        """Fetch ``start``.. from the replay socket, apply it, then the batches that waited.

        A gap needs every batch from ``start`` on. A late join (nothing applied yet) takes
        any contiguous run that ends right before the first live batch: history older than
        the publisher's buffer only costs misses, never a false hit.
        """
        replayed: list[tuple[int, bytes]] = []
        try:
            replayed = await asyncio.wait_for(
                self._fetch_replay(address, start), timeout=self.replay_timeout_s
            )
        except (TimeoutError, zmq.ZMQError, ValueError) as exc:
            log.warning("KV events: replay from %s for %s failed: %s", address, endpoint, exc)
        if self._streams.get(endpoint) is not stream:  # purged meanwhile
            return
        pending, stream.pending = stream.pending, []
        stream.repairing = False
        first_live = pending[0][0] if pending else None
        needed = start
        for seq, payload in replayed:
            if first_live is not None and seq >= first_live:
                break
            if seq < needed:
                continue
            if seq != needed:
                if late_join and needed == start:
                    needed = seq  # the buffer begins later than seq 0
                else:
                    break
            self._apply(endpoint, stream, seq, payload)
            self.stats.replayed_batches += 1
            needed += 1
        if first_live is None or needed >= first_live:
            self.stats.replays_ok += 1
        else:
            self.stats.replays_failed += 1
            if not late_join:  # a late join started empty: missing history only costs misses
                log.info(
                    "KV events: replay for %s stopped at %d of %d; dropping its entries",
                    endpoint,
                    needed,
                    first_live,
                )
                self._drop_entries(endpoint)
            stream.last_seq = first_live - 1  # go on from the live batches
        for seq, payload in pending:
            self._on_batch(endpoint, seq, payload)

    async def _fetch_replay(self, address: str, start: int) -> list[tuple[int, bytes]]:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(address)
            await sock.send_multipart([b"", encode_seq(start)])
            out: list[tuple[int, bytes]] = []
            while True:
                frames = await sock.recv_multipart()
                if len(frames) != 4 or frames[0] != b"":
                    raise ValueError(f"unexpected replay message of {len(frames)} frames")
                seq = decode_seq(frames[2])
                if seq == REPLAY_END_SEQ:
                    return out
                out.append((seq, frames[3]))
        finally:
            sock.close(linger=0)
