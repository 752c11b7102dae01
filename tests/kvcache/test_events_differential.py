"""kvgate.kvcache.events against vLLM's own event structs, on captured and generated batches.

vLLM is not importable in kvgate's environment (it lives in $KVGATE_VLLM_VENV), so the
reference below restates the wire shape of vllm/distributed/kv_events.py as vLLM 0.32 sends
it (tests/data/vllm-cpu-kv-events.txt): a batch is an array ``[ts, events, dp_rank]``, each
event a map tagged ``"type"``, with ``lora_id``, ``medium`` and ``lora_name`` declared
without defaults (vLLM's decoder requires them) and the later fields defaulted. Checked:

* every captured vLLM batch decodes to the same events with both;
* a batch vLLM's structs encode (generated) decodes the same with kvgate;
* what kvgate encodes decodes with vLLM's strict structs to the same batch;
* arbitrary and mutated payloads raise only ``msgspec`` errors (``ValueError``s).

``KVGATE_FUZZ_EXAMPLES=N`` runs N generated batches instead of the quick default.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.kvcache import events
from kvgate.kvcache.hashing import event_hash_from_wire

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm-cpu-kv-events.txt"
EXAMPLES = int(os.environ.get("KVGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=timedelta(seconds=2))


# --- the reference: vLLM's wire shape ------------------------------------------------------


class RefEvent(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    pass


class RefBlockStored(RefEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class RefBlockRemoved(RefEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class RefAllBlocksCleared(RefEvent, tag="AllBlocksCleared"):
    pass


class RefBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[RefBlockStored | RefBlockRemoved | RefAllBlocksCleared]
    data_parallel_rank: int | None = None


REF_DECODER = msgspec.msgpack.Decoder(RefBatch)
REF_ENCODER = msgspec.msgpack.Encoder()


def hashes(values: list[int | bytes]) -> list[int]:
    return [int(event_hash_from_wire(v)) for v in values]


def normalised(batch: RefBatch | events.EventBatch) -> list[tuple[Any, ...]]:
    """Both kinds of batch as comparable tuples, hashes as 64-bit ints."""
    out: list[tuple[Any, ...]] = [(batch.ts, batch.data_parallel_rank)]
    for e in batch.events:
        name = type(e).__name__.removeprefix("Ref")
        if isinstance(e, RefBlockStored | events.BlockStored):
            parent = None if e.parent_block_hash is None else hashes([e.parent_block_hash])[0]
            extra = (
                None
                if e.extra_keys is None
                else [None if k is None else list(k) for k in e.extra_keys]
            )
            fields = (e.lora_id, e.medium, e.lora_name, extra, e.group_idx)
            spec = (e.kv_cache_spec_kind, e.kv_cache_spec_sliding_window)
            blocks = (hashes(e.block_hashes), parent, list(e.token_ids), e.block_size)
            out.append((name, *blocks, *fields, *spec))
        elif isinstance(e, RefBlockRemoved | events.BlockRemoved):
            out.append((name, hashes(e.block_hashes), e.medium, e.group_idx))
        else:
            out.append((name,))
    return out


def captured_payloads() -> list[bytes]:
    assert DATA.is_file(), f"{DATA}: the captured vLLM KV events are missing"
    text = DATA.read_text()
    found = re.findall(r"payload hex \(\d+ bytes\):\n([0-9a-f]+)", text)
    assert found, f"{DATA}: no 'payload hex' blocks"
    return [bytes.fromhex(h) for h in found]


def test_captured_vllm_batches_decode_the_same() -> None:
    payloads = captured_payloads()
    for payload in payloads:
        assert normalised(events.decode_batch(payload)) == normalised(REF_DECODER.decode(payload))
    assert len(payloads) >= 4


# --- generated batches ---------------------------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
wire_hash = st.one_of(u64, u64, st.binary(min_size=32, max_size=32))
optional_str = st.one_of(st.none(), st.sampled_from(["GPU", "CPU", "full_attention", "lora-a"]))
optional_int = st.one_of(st.none(), st.integers(0, 2**31))


@st.composite
def block_stored(draw: st.DrawFn) -> RefBlockStored:
    n = draw(st.integers(0, 4))
    size = draw(st.integers(1, 4))
    extra = draw(st.one_of(st.none(), st.just([None] * n), st.just([("salt", 1)] * n)))
    return RefBlockStored(
        block_hashes=draw(st.lists(wire_hash, min_size=n, max_size=n)),
        parent_block_hash=draw(st.one_of(st.none(), wire_hash)),
        token_ids=draw(st.lists(st.integers(0, 2**31), min_size=n * size, max_size=n * size)),
        block_size=size,
        lora_id=draw(optional_int),
        medium=draw(optional_str),
        lora_name=draw(optional_str),
        extra_keys=extra,
        group_idx=draw(optional_int),
        kv_cache_spec_kind=draw(optional_str),
        kv_cache_spec_sliding_window=draw(optional_int),
    )


ref_event = st.one_of(
    block_stored(),
    st.builds(
        RefBlockRemoved,
        block_hashes=st.lists(wire_hash, max_size=4),
        medium=optional_str,
        group_idx=optional_int,
    ),
    st.just(RefAllBlocksCleared()),
)
ref_batch = st.builds(
    RefBatch,
    ts=st.floats(0, 2e9, allow_nan=False),
    events=st.lists(ref_event, max_size=5),
    data_parallel_rank=optional_int,
)


@FUZZ
@given(ref_batch)
def test_what_vllm_encodes_kvgate_decodes_the_same(batch: RefBatch) -> None:
    payload = REF_ENCODER.encode(batch)
    assert normalised(events.decode_batch(payload)) == normalised(batch)


@FUZZ
@given(ref_batch, st.sampled_from(["map", "array"]))
def test_what_kvgate_encodes_vllm_decodes_the_same(batch: RefBatch, layout: str) -> None:
    ours = events.decode_batch(REF_ENCODER.encode(batch))
    payload = events.encode_batch(ours, layout)  # type: ignore[arg-type]
    if layout == "map":  # vLLM >= 0.11 decodes only the map layout
        assert normalised(REF_DECODER.decode(payload)) == normalised(ours)
    assert normalised(events.decode_batch(payload)) == normalised(ours)


# --- hostile payloads ----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_payloads_raise_only_msgspec_errors(payload: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError):  # ValidationError is one; a ValueError
        events.decode_batch(payload)


@FUZZ
@given(st.integers(0), st.integers(0, 255), st.integers(0, 3))
def test_mutated_vllm_batches_raise_only_msgspec_errors(where: int, byte: int, how: int) -> None:
    for payload in captured_payloads():
        i = where % len(payload)
        if how == 0:
            mutated = payload[:i] + bytes([byte]) + payload[i + 1 :]
        elif how == 1:
            mutated = payload[:i]
        elif how == 2:
            mutated = payload[:i] + bytes([byte]) + payload[i:]
        else:
            mutated = payload[:i] + payload[i + 1 :]
        try:
            batch = events.decode_batch(mutated)
        except msgspec.DecodeError:
            continue
        for e in batch.events:  # whatever decoded is normalised: 64-bit hashes only
            if isinstance(e, events.BlockStored | events.BlockRemoved):
                assert all(isinstance(h, int) and 0 <= h < 2**64 for h in e.block_hashes)
