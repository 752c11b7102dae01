"""kvgate's one hashing module reproduces the hashes real vLLM 0.32 put on the wire."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from kvgate.kvcache import hashing

DATA = Path(__file__).parent.parent / "data" / "vllm-cpu-kv-events.txt"


def _captured_batches() -> list[tuple[str, list[dict]]]:
    """(section title, decoded events) for every payload in the captured file."""
    out = []
    title = ""
    for line in DATA.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:]
        m = re.match(r"payload hex \(\d+ bytes\):", line)
        if m:
            continue
        if re.fullmatch(r"[0-9a-f]{40,}", line):
            batch = msgspec.msgpack.decode(bytes.fromhex(line))
            out.append((title, batch[1]))
    return out


def test_captured_file_has_batches() -> None:
    assert len(_captured_batches()) == 4


@pytest.mark.parametrize("section", range(3))
def test_block_stored_hashes_recomputed_from_token_ids(section: int) -> None:
    title, events = _captured_batches()[section]
    algo = "sha256_cbor" if "sha256_cbor" in title else "sha256"
    stored = [e for e in events if e["type"] == "BlockStored"]
    assert stored
    for event in stored:
        if event["parent_block_hash"] is not None:
            continue  # a chain continuation needs the parent's full digest, checked below
        size = event["block_size"]
        ours = hashing.block_hashes(event["token_ids"], size, algo=algo)
        assert [hashing.to_event_hash(h) for h in ours] == event["block_hashes"]


def test_chat_prompt_first_block_matches_vllm() -> None:
    from kvgate.kvcache.tokenize import Tokenizer

    ids = Tokenizer.default().encode_chat(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    assert len(ids) == 37
    (h,) = hashing.block_hashes(ids, 32)
    assert hashing.to_event_hash(h) == 835424480074827902


def test_pythonhashseed_changes_none_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    base = hashing.none_hash("sha256_cbor")
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    assert hashing.none_hash("sha256_cbor") != base
    assert hashing.none_hash("sha256_cbor") == hashing.none_hash("sha256_cbor", seed="42")


def test_event_hash_from_wire_accepts_int_and_bytes() -> None:
    digest = hashing.hash_block_tokens(None, list(range(32)))
    as_int = hashing.to_event_hash(digest)
    assert hashing.event_hash_from_wire(digest) == as_int
    assert hashing.event_hash_from_wire(as_int) == as_int


def test_request_keys_chain_and_partial_blocks() -> None:
    tokens = list(range(100))
    keys = hashing.request_keys(tokens, 32)
    assert len(keys) == 3  # the 4-token tail is not keyed
    # a chain continued from a parent equals the chain computed in one go
    assert hashing.request_keys(tokens[32:96], 32, parent=keys[0]) == keys[1:]
    assert hashing.request_keys(tokens, 32, algo="fnv64a_cbor") != keys
    assert len(hashing.request_keys(tokens, 32, algo="fnv64a_cbor")) == 3


def test_prefix_block_hashes_are_a_chain() -> None:
    seed = hashing.prefix_hash_seed("m")
    text = b"a" * 64 * 3 + b"b" * 10
    hs = hashing.prefix_block_hashes(text, 64, seed)
    assert len(hs) == 3 and len(set(hs)) == 3
    assert hashing.prefix_block_hashes(text, 64, seed, max_blocks=2) == hs[:2]
    assert hashing.prefix_block_hashes(text, 64, hashing.prefix_hash_seed("other")) != hs
