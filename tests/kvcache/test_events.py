"""kvgate decodes and encodes vLLM's KV-event wire format, checked against real vLLM bytes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import msgspec
import pytest

from kvgate.kvcache import events
from kvgate.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
)

DATA = Path(__file__).parent.parent / "data" / "vllm-cpu-kv-events.txt"
REPO = Path(__file__).resolve().parents[2]


def _captured() -> list[tuple[str, int, bytes, list[dict]]]:
    """(topic, seq, payload, decoded events as printed) for every captured batch."""
    out = []
    topic, seq = "", -1
    lines = DATA.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("topic: "):
            topic = line[len("topic: ") :]
        elif line.startswith("seq: "):
            seq = int(line[len("seq: ") :])
        elif re.fullmatch(r"[0-9a-f]{40,}", line):
            assert lines[i + 1] == "decoded:"
            printed = json.loads(lines[i + 2])
            out.append((topic, seq, bytes.fromhex(line), printed[1]))
    return out


def test_every_captured_batch_decodes_as_printed() -> None:
    batches = _captured()
    assert len(batches) == 4
    for _topic, _seq, payload, printed in batches:
        batch = events.decode_batch(payload)
        assert batch.data_parallel_rank == 0
        assert len(batch.events) == len(printed)
        for ours, theirs in zip(batch.events, printed, strict=True):
            assert type(ours).__name__ == theirs["type"]
            assert isinstance(ours, BlockStored | BlockRemoved)
            assert ours.block_hashes == theirs["block_hashes"]
            assert ours.medium == theirs["medium"] == "GPU"
            if isinstance(ours, BlockStored):
                assert ours.token_ids == theirs["token_ids"]
                assert ours.parent_block_hash == theirs["parent_block_hash"]
                assert ours.block_size == 32
                assert len(ours.token_ids) == 32 * len(ours.block_hashes)
                assert ours.kv_cache_spec_kind == "full_attention"


def test_map_encoding_reproduces_vllm_bytes_exactly() -> None:
    for _topic, _seq, payload, _printed in _captured():
        assert events.encode_batch(events.decode_batch(payload), "map") == payload


def test_array_layout_round_trips_and_matches_the_legacy_shape() -> None:
    for _topic, _seq, payload, _printed in _captured():
        batch = events.decode_batch(payload)
        encoded = events.encode_batch(batch, "array")
        raw = msgspec.msgpack.decode(encoded)
        assert isinstance(raw[1][0], list) and raw[1][0][0] == type(batch.events[0]).__name__
        assert events.decode_batch(encoded) == batch


def test_legacy_short_array_and_unknown_fields_are_tolerated() -> None:
    # vLLM 0.9-era array: no lora_name and nothing after medium; plus trailing junk fields.
    short = ["BlockStored", [1, 2], None, [7] * 8, 4, None, "GPU"]
    extra = ["BlockRemoved", [2], "CPU", 0, "future-field", 9]
    payload = msgspec.msgpack.encode([1.5, [short, extra, ["AllBlocksCleared"]]])
    batch = events.decode_batch(payload)
    assert batch.data_parallel_rank is None
    stored, removed, cleared = batch.events
    assert isinstance(stored, BlockStored) and stored.lora_name is None
    assert stored.block_hashes == [1, 2] and stored.medium == "GPU"
    assert isinstance(removed, BlockRemoved) and removed.medium == "CPU"
    assert isinstance(cleared, AllBlocksCleared)
    as_map = msgspec.msgpack.encode(
        [2.0, [{"type": "BlockRemoved", "block_hashes": [3], "medium": "GPU", "locality": "x"}]]
    )
    assert events.decode_batch(as_map).events == [BlockRemoved([3], "GPU")]


def test_bytes_and_signed_hashes_normalise_to_low_64_bits() -> None:
    digest = bytes(range(32))
    low = int.from_bytes(digest[-8:], "big")
    for layout in ("map", "array"):
        batch = EventBatch(
            0.0,
            [
                BlockStored([digest, -1], digest, [1] * 8, 4, medium="GPU"),
                BlockRemoved([digest], "GPU"),
            ],
        )
        decoded = events.decode_batch(events.encode_batch(batch, layout))
        stored, removed = decoded.events
        assert isinstance(stored, BlockStored) and isinstance(removed, BlockRemoved)
        assert stored.block_hashes == [low, (1 << 64) - 1]
        assert stored.parent_block_hash == low
        assert removed.block_hashes == [low]


def test_garbage_payload_raises_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        events.decode_batch(b"\x93\x01\x02")
    with pytest.raises(msgspec.DecodeError):
        events.decode_batch(msgspec.msgpack.encode([1.0, [{"type": "Nope"}]]))


def test_frames_topic_and_seq() -> None:
    topic = events.make_topic("127.0.0.1:8001", "org/model@v2")
    assert topic == "kv@127.0.0.1:8001@org/model@v2"
    assert events.parse_topic(topic.encode()) == ("127.0.0.1:8001", "org/model@v2")
    assert events.parse_topic("kv@only") is None
    assert events.encode_seq(4) == b"\x00" * 7 + b"\x04"
    assert events.encode_seq(events.REPLAY_END_SEQ) == b"\xff" * 8
    assert events.decode_seq(b"\xff" * 8) == -1
    with pytest.raises(ValueError, match="8 bytes"):
        events.decode_seq(b"\x00")
    frames = events.encode_frames(topic, 7, EventBatch(1.0, [AllBlocksCleared()], 0))
    assert frames[0] == topic.encode() and events.decode_seq(frames[1]) == 7
    assert events.decode_batch(frames[2]).events == [AllBlocksCleared()]
    topic_c, seq_c, payload_c, _ = _captured()[3]
    assert events.parse_topic(topic_c) == ("127.0.0.1:18102", "smollm2")
    assert seq_c == 6 and events.decode_batch(payload_c).events[0] == BlockRemoved(
        [1821723841462532259], "GPU", 0
    )


# --- against vLLM's own classes (the engine venv from `make vllm`) ------------------------------


def _vllm_python() -> Path:
    venv = Path(os.environ.get("KVGATE_VLLM_VENV", REPO / ".venv-vllm"))
    return venv / "bin" / "python"


_VLLM_SCRIPT = textwrap.dedent(
    """
    import sys, msgspec
    from vllm.distributed import kv_events as kv

    out_dir = sys.argv[1]

    # The legacy array layout, with vLLM's own field definitions.
    class ArrayStored(kv.BlockStored, array_like=True, tag="BlockStored"):
        pass

    class ArrayRemoved(kv.BlockRemoved, array_like=True, tag="BlockRemoved"):
        pass

    class ArrayCleared(kv.AllBlocksCleared, array_like=True, tag="AllBlocksCleared"):
        pass

    def batch(stored, removed, cleared):
        return kv.KVEventBatch(ts=1.25, data_parallel_rank=0, events=[
            stored(block_hashes=[11, 2**64 - 1], parent_block_hash=None,
                   token_ids=list(range(8)), block_size=4, lora_id=None, medium="GPU",
                   lora_name=None, extra_keys=[None, None], group_idx=0,
                   kv_cache_spec_kind="full_attention"),
            stored(block_hashes=[b"\\x01" * 32], parent_block_hash=2**64 - 1,
                   token_ids=[9, 9, 9, 9], block_size=4, lora_id=None, medium="CPU",
                   lora_name=None),
            removed(block_hashes=[11], medium="GPU"),
            cleared(),
        ])

    enc = msgspec.msgpack.encode
    open(out_dir + "/map.bin", "wb").write(enc(batch(kv.BlockStored, kv.BlockRemoved, kv.AllBlocksCleared)))
    open(out_dir + "/array.bin", "wb").write(enc(batch(ArrayStored, ArrayRemoved, ArrayCleared)))
    got = msgspec.msgpack.decode(open(out_dir + "/kvgate.bin", "rb").read(), type=kv.KVEventBatch)
    summary = [type(e).__name__ for e in got.events], got.events[0].block_hashes[:2]
    open(out_dir + "/decoded.txt", "w").write(repr(summary))
    """
)


@pytest.fixture(scope="module")
def vllm_io(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run vLLM's classes once (importing vllm takes tens of seconds): encode both layouts,
    decode what kvgate encodes."""
    python = _vllm_python()
    if not python.exists():
        pytest.skip(f"no vLLM engine venv at {python.parent.parent} (run `make vllm`)")
    out = tmp_path_factory.mktemp("vllm-events")
    payload = _captured()[1][2]
    (out / "kvgate.bin").write_bytes(events.encode_batch(events.decode_batch(payload)))
    proc = subprocess.run(
        [str(python), "-c", _VLLM_SCRIPT, str(out)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 and b"No module named 'vllm" in proc.stderr:
        pytest.skip("the engine venv has no vllm (run `make vllm`)")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return out


def _check_vllm_batch(batch: EventBatch) -> None:
    stored, stored2, removed, cleared = batch.events
    assert isinstance(stored, BlockStored) and isinstance(stored2, BlockStored)
    assert stored.block_hashes == [11, 2**64 - 1] and stored.parent_block_hash is None
    assert stored.token_ids == list(range(8)) and stored.block_size == 4
    assert stored.group_idx == 0 and stored.kv_cache_spec_kind == "full_attention"
    assert stored2.block_hashes == [int.from_bytes(b"\x01" * 8, "big")]
    assert stored2.parent_block_hash == 2**64 - 1 and stored2.medium == "CPU"
    assert removed == BlockRemoved([11], "GPU")
    assert isinstance(cleared, AllBlocksCleared)
    assert batch.ts == 1.25 and batch.data_parallel_rank == 0


@pytest.mark.vllm
@pytest.mark.parametrize("layout", ["map", "array"])
def test_decodes_batches_encoded_by_vllms_own_classes(vllm_io: Path, layout: str) -> None:
    raw = (vllm_io / f"{layout}.bin").read_bytes()
    first_event = msgspec.msgpack.decode(raw)[1][0]
    assert isinstance(first_event, dict if layout == "map" else list)
    _check_vllm_batch(events.decode_batch(raw))


@pytest.mark.vllm
def test_vllms_decoder_accepts_what_kvgate_encodes(vllm_io: Path) -> None:
    summary = (vllm_io / "decoded.txt").read_text()
    assert summary == "(['BlockStored'], [4601527758939934069, 14094823798576835514])"
