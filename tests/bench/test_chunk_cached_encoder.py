"""kvcache.tokenize.ChunkCachedEncoder (added for the oracle scorer): same ids as a whole encode."""

from __future__ import annotations

import random

from kvgate.bench.workloads import TextGen
from kvgate.kvcache.tokenize import ChunkCachedEncoder, Tokenizer
from kvgate.scheduling.types import Request


def test_equal_to_whole_encoding_and_reuses_shared_prefixes() -> None:
    tok = Tokenizer.default()
    enc = ChunkCachedEncoder(tok, chunk_chars=512)
    assert enc.exact
    gen = TextGen(3)
    system = gen.text(2000)
    for _ in range(3):
        text = system + gen.text(50)
        assert enc.encode(text) == tok.encode(text)
    assert enc.hits > enc.misses  # the system prompt's chunks were encoded once
    rng = random.Random(7)
    alphabet = "ab cd\n\t  ,.!'s 12é漢 <|im_start|>"
    for _ in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(3000))
        assert enc.encode(text) == tok.encode(text)
        assert enc.encode(text, add_special_tokens=False) == tok.encode(
            text, add_special_tokens=False
        )


def test_encode_request_matches_the_tokenizer_for_chat_and_completions() -> None:
    tok = Tokenizer.default()
    enc = ChunkCachedEncoder(tok, chunk_chars=256)
    text = TextGen(1).text(600)
    chat = [{"role": "system", "content": text}, {"role": "user", "content": "hi there"}]
    assert enc.encode_request(Request("a", "m", kind="chat", messages=chat)) == tuple(
        tok.encode_chat(chat)
    )
    assert enc.encode_request(Request("b", "m", prompt=text)) == tuple(tok.encode(text))
