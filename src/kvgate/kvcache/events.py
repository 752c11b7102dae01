"""vLLM's KV-event wire format: msgspec Structs, batch encode/decode, ZMQ frame helpers.

A vLLM publisher (vllm/distributed/kv_events.py) sends one 3-frame ZMQ message per batch::

    [topic (utf-8), seq (8-byte big-endian signed, from 0 per publisher), payload (msgpack)]

The payload is an :class:`EventBatch`, always a msgpack array ``[ts, events, dp_rank?]``. Its
events come in two layouts, and decoders accept both:

- **map** (vLLM >= 0.11, what vLLM 0.32 sends): each event is a map with a ``"type"`` key
  naming the class, fields in declaration order, fields equal to their default omitted;
- **array** (legacy): ``["BlockStored", block_hashes, parent, token_ids, block_size, lora_id,
  medium, lora_name, extra_keys?, group_idx?, kv_cache_spec_kind?, sliding_window?]``.

Block hashes are ints (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default) or raw digest
bytes; :func:`decode_batch` normalises both to the 64-bit ``EventBlockHash`` with
``hashing.event_hash_from_wire``. Unknown extra fields (newer vLLM's ``locality`` …) are
ignored in both layouts.

Encoding (the simulator's publisher) reproduces vLLM 0.32 byte for byte in the map layout:
the fields vLLM declares without a default (``lora_id``, ``medium``, ``lora_name``) are
always written, so vLLM's own strict decoder accepts what kvgate sends.

The public event classes are lenient (every field after ``block_size`` has a default) so
older and newer producers decode; encoding converts to strict private twins.

These structs stand in for vLLM's own (vllm/distributed/kv_events.py), which kvgate does not
import: vLLM is a separate environment. No benchmark chose them; the reason is the import.
tests/kvcache/test_events_differential.py decodes captured vLLM batches and generated ones
encoded by a restatement of vLLM's structs, checks vLLM's strict decoder reads what this
module encodes, and that any other payload raises only ``msgspec.DecodeError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from kvgate.kvcache.hashing import EventBlockHash, event_hash_from_wire

__all__ = [
    "DEFAULT_TOPIC_PREFIX",
    "REPLAY_END_SEQ",
    "AllBlocksCleared",
    "BatchDecoder",
    "BlockRemoved",
    "BlockStored",
    "EventBatch",
    "KVCacheEvent",
    "Layout",
    "decode_batch",
    "decode_seq",
    "encode_batch",
    "encode_frames",
    "encode_seq",
    "make_topic",
    "parse_topic",
]

Layout = Literal["map", "array"]

#: llm-d's topic filter and the prefix of every topic kvgate publishes: ``kv@<host:port>@<model>``.
DEFAULT_TOPIC_PREFIX = "kv@"
#: The seq of the replay socket's end-of-replay marker (vLLM sends it with an empty payload).
REPLAY_END_SEQ = -1

# Wire hashes before normalisation: uint64 (or int64 from some producers) or digest bytes.
WireHash = int | bytes


# --- public (lenient) event types: the map layout -----------------------------------------------


class KVCacheEvent(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Base of the tagged union; the tag (``"type"``) is the class name as in vLLM."""


class BlockStored(KVCacheEvent):
    """Full blocks entered the cache (GPU, or CPU when offloaded), one hash per block.

    ``token_ids`` spans every block of the event (``len == block_size * len(block_hashes)``);
    ``parent_block_hash`` is the hash of the block before the first one (None for a
    request's first block). After :func:`decode_batch` every hash is an ``EventBlockHash``.
    """

    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None  # "GPU" or "CPU"; vLLM sends "GPU" even on the CPU backend
    lora_name: str | None = None
    extra_keys: list[Any] | None = None  # one entry per block (None when no extra keys)
    group_idx: int | None = None  # KV-cache group (hybrid models)
    kv_cache_spec_kind: str | None = None  # e.g. "full_attention"
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent):
    """Blocks left the cache of ``medium`` (eviction, or moved away from that tier)."""

    block_hashes: list[WireHash]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    """The engine dropped its whole prefix cache (reset_prefix_cache, sleep, restart)."""


Event = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One published batch: ``[ts, events, data_parallel_rank]`` (always an array)."""

    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


# --- private strict twins for encoding (vLLM 0.32's exact schema) --------------------------------


class _MapEvent(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    pass


class _MapBlockStored(_MapEvent, tag="BlockStored"):
    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _MapBlockRemoved(_MapEvent, tag="BlockRemoved"):
    block_hashes: list[WireHash]
    medium: str | None
    group_idx: int | None = None


class _MapAllBlocksCleared(_MapEvent, tag="AllBlocksCleared"):
    pass


class _MapBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[_MapBlockStored | _MapBlockRemoved | _MapAllBlocksCleared]
    data_parallel_rank: int | None = None


class _ArrayEvent(msgspec.Struct, array_like=True, tag=True, omit_defaults=True, gc=False):
    pass


class _ArrayBlockStored(_ArrayEvent, tag="BlockStored"):
    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _ArrayBlockRemoved(_ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[WireHash]
    medium: str | None = None
    group_idx: int | None = None


class _ArrayAllBlocksCleared(_ArrayEvent, tag="AllBlocksCleared"):
    pass


class _ArrayBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[_ArrayBlockStored | _ArrayBlockRemoved | _ArrayAllBlocksCleared]
    data_parallel_rank: int | None = None


_ENCODER = msgspec.msgpack.Encoder()
_MAP_DECODER = msgspec.msgpack.Decoder(EventBatch)
_ARRAY_DECODER = msgspec.msgpack.Decoder(_ArrayBatch)


# --- encode -------------------------------------------------------------------------------------


def _to_map(event: Event) -> _MapBlockStored | _MapBlockRemoved | _MapAllBlocksCleared:
    if isinstance(event, BlockStored):
        return _MapBlockStored(
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            event.block_size,
            event.lora_id,
            event.medium,
            event.lora_name,
            event.extra_keys,
            event.group_idx,
            event.kv_cache_spec_kind,
            event.kv_cache_spec_sliding_window,
        )
    if isinstance(event, BlockRemoved):
        return _MapBlockRemoved(event.block_hashes, event.medium, event.group_idx)
    return _MapAllBlocksCleared()


def _to_array(event: Event) -> _ArrayBlockStored | _ArrayBlockRemoved | _ArrayAllBlocksCleared:
    if isinstance(event, BlockStored):
        return _ArrayBlockStored(
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            event.block_size,
            event.lora_id,
            event.medium,
            event.lora_name,
            event.extra_keys,
            event.group_idx,
            event.kv_cache_spec_kind,
            event.kv_cache_spec_sliding_window,
        )
    if isinstance(event, BlockRemoved):
        return _ArrayBlockRemoved(event.block_hashes, event.medium, event.group_idx)
    return _ArrayAllBlocksCleared()


def encode_batch(batch: EventBatch, layout: Layout = "map") -> bytes:
    """The msgpack payload of ``batch`` in the given event layout (vLLM 0.32 uses "map")."""
    if layout == "map":
        return _ENCODER.encode(
            _MapBatch(batch.ts, [_to_map(e) for e in batch.events], batch.data_parallel_rank)
        )
    if layout == "array":
        return _ENCODER.encode(
            _ArrayBatch(batch.ts, [_to_array(e) for e in batch.events], batch.data_parallel_rank)
        )
    raise ValueError(f"unknown KV-event layout {layout!r} (known: map, array)")


# --- decode -------------------------------------------------------------------------------------


def _normalise(hashes: list[WireHash]) -> list[WireHash]:
    """Hashes as 64-bit unsigned ints; the common all-uint64 list is returned as is."""
    try:
        if not hashes or min(hashes) >= 0:  # type: ignore[operator]  # TypeError on bytes
            return hashes
    except TypeError:
        pass
    return [event_hash_from_wire(h) for h in hashes]


def _normalise_events(events: list[Event]) -> None:
    for event in events:
        if isinstance(event, BlockStored):
            event.block_hashes = _normalise(event.block_hashes)
            parent = event.parent_block_hash
            if parent is not None and (type(parent) is not int or parent < 0):
                event.parent_block_hash = event_hash_from_wire(parent)
        elif isinstance(event, BlockRemoved):
            event.block_hashes = _normalise(event.block_hashes)


def _from_array(batch: _ArrayBatch) -> EventBatch:
    events: list[Event] = []
    for e in batch.events:
        if isinstance(e, _ArrayBlockStored):
            events.append(
                BlockStored(
                    e.block_hashes,
                    e.parent_block_hash,
                    e.token_ids,
                    e.block_size,
                    e.lora_id,
                    e.medium,
                    e.lora_name,
                    e.extra_keys,
                    e.group_idx,
                    e.kv_cache_spec_kind,
                    e.kv_cache_spec_sliding_window,
                )
            )
        elif isinstance(e, _ArrayBlockRemoved):
            events.append(BlockRemoved(e.block_hashes, e.medium, e.group_idx))
        else:
            events.append(AllBlocksCleared())
    return EventBatch(batch.ts, events, batch.data_parallel_rank)


def _decode(payload: bytes, layout: Layout) -> EventBatch:
    if layout == "map":
        return _MAP_DECODER.decode(payload)
    return _from_array(_ARRAY_DECODER.decode(payload))


class BatchDecoder:
    """Decodes payloads of either layout, trying the one that worked last first.

    One instance per publisher keeps the common case to a single decode attempt.
    Raises ``msgspec.DecodeError`` (a ``ValueError``) for a payload that is neither layout.
    """

    __slots__ = ("layout",)

    def __init__(self, layout: Layout = "map") -> None:
        self.layout: Layout = layout

    def decode(self, payload: bytes) -> EventBatch:
        first = self.layout
        try:
            batch = _decode(payload, first)
        except msgspec.ValidationError:
            other: Layout = "array" if first == "map" else "map"
            batch = _decode(payload, other)  # raises if neither layout fits
            self.layout = other
        _normalise_events(batch.events)
        return batch


def decode_batch(payload: bytes) -> EventBatch:
    """Decode one payload (map or array layout) with every hash as an ``EventBlockHash``."""
    return BatchDecoder().decode(payload)


def event_hashes(hashes: Sequence[WireHash]) -> list[EventBlockHash]:
    """Typed view of a decoded event's (already normalised) hashes."""
    return [event_hash_from_wire(h) for h in hashes]


# --- frames -------------------------------------------------------------------------------------


def make_topic(endpoint: str, model: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """``kv@<endpoint>@<model>``, the topic llm-d's subscriber maps back to an endpoint."""
    return f"{prefix}{endpoint}@{model}"


def parse_topic(topic: bytes | str) -> tuple[str, str] | None:
    """``(endpoint, model)`` from ``kv@<endpoint>@<model>``, or None for another shape.

    The model may itself contain ``@``; the endpoint (``host:port``) may not.
    """
    text = topic.decode("utf-8", "replace") if isinstance(topic, bytes) else topic
    parts = text.split("@", 2)
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[1], parts[2]


def encode_seq(seq: int) -> bytes:
    """The seq frame: 8 bytes, big-endian, signed (the replay end marker is -1)."""
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise ValueError(f"KV-event seq frame must be 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)


def encode_frames(topic: str, seq: int, batch: EventBatch, layout: Layout = "map") -> list[bytes]:
    """The three frames a vLLM publisher sends for one batch."""
    return [topic.encode(), encode_seq(seq), encode_batch(batch, layout)]
