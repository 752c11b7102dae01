"""kvcache.tokenize: the chunk-cached request encoder gives Tokenizer.encode_request's ids exactly."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kvgate.bench.workloads import TextGen
from kvgate.kvcache.tokenize import ChunkCachedEncoder, Tokenizer, chunk_encoder
from kvgate.scheduling.types import Request

_ODD_TEXT = (
    "def f(x):\n    return x  + 1\t# tab\n\n"
    "Numbers 12345 678.9, 'quotes' don't it's; URLs http://a.b/c?d=e "
    "ünïcödé — 漢字かな 😀 <|im_start|> <|im_end|> trailing   spaces   "
)


def _chats() -> list[list[dict[str, Any]]]:
    gen = TextGen(11)
    system = gen.text(1500)
    history: list[dict[str, Any]] = [{"role": "system", "content": system}]
    chats = [[{"role": "user", "content": "What is the capital of France?"}]]
    for turn in range(4):  # a conversation resending its growing history
        history = [*history, {"role": "user", "content": gen.text(200 + 50 * turn) + _ODD_TEXT}]
        chats.append(list(history))
        history = [*history, {"role": "assistant", "content": gen.text(120)}]
    chats.append(
        [
            {"role": "system", "content": [{"type": "text", "text": system}]},  # content parts
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": " b"}],
            },
        ]
    )
    rng = random.Random(5)
    alphabet = "ab cd\n\t  ,.!'s 12é漢 <|im_start|>"
    chats.append([{"role": "user", "content": "".join(rng.choice(alphabet) for _ in range(4000))}])
    return chats


def _prompts() -> list[str]:
    gen = TextGen(12)
    doc = gen.text(3000)
    return [doc + gen.text(40), doc + _ODD_TEXT + gen.text(40), _ODD_TEXT * 40, "hi", ""]


def _request(
    i: int, *, prompt: str | None = None, messages: Sequence[Mapping[str, Any]] | None = None
) -> Request:
    kind = "chat" if messages is not None else "completions"
    return Request(f"r{i}", "m", kind=kind, prompt=prompt, messages=messages)


@pytest.mark.parametrize("chunk_chars", [128, 2048])
def test_encode_request_equals_the_tokenizer_for_chats_and_prompts(chunk_chars: int) -> None:
    tok = Tokenizer.default()
    enc = ChunkCachedEncoder(tok, chunk_chars=chunk_chars)
    assert enc.exact
    for i, chat in enumerate(_chats()):
        expected = tok.encode_request(_request(i, messages=chat))
        assert enc.encode_request(_request(i, messages=chat)) == expected, f"chat {i}"
    for i, prompt in enumerate(_prompts()):
        expected = tok.encode_request(_request(i, prompt=prompt))
        assert enc.encode_request(_request(i, prompt=prompt)) == expected, f"prompt {i}"
    assert enc.hits > 0  # the shared system prompt, history and document were reused


def test_a_resent_prefix_is_served_from_the_cache() -> None:
    tok = Tokenizer.default()
    enc = ChunkCachedEncoder(tok, chunk_chars=256)
    system = TextGen(13).text(2000)
    enc.encode(system + " first question")
    misses = enc.misses
    ids = enc.encode(system + " second question")
    assert ids == tok.encode(system + " second question")
    assert enc.misses - misses == 1  # only the chunk holding the new question
    assert enc.hits >= len(system) // 256 - 1


def test_chunk_encoder_is_one_per_tokenizer() -> None:
    tok = Tokenizer.default()
    assert chunk_encoder(tok) is chunk_encoder(Tokenizer.default())
    assert chunk_encoder(tok).tokenizer is tok
