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


def test_encode_chat_equals_the_tokenizers_chat_encoding() -> None:
    """Multi-turn chats with long, odd contents (template markers, unicode, runs of spaces):
    the chunked path must give exactly Tokenizer.encode_chat's ids, with and without the
    generation prompt, and reuse the shared system prompt's chunks."""
    tok = Tokenizer.default()
    enc = ChunkCachedEncoder(tok, chunk_chars=256)
    gen = TextGen(5)
    system = gen.text(1500)
    for k in range(4):
        chat = [
            {"role": "system", "content": system},
            {"role": "user", "content": gen.text(40).lstrip()},
            {"role": "assistant", "content": gen.text(300).lstrip()},
            {"role": "user", "content": [{"type": "text", "text": gen.text(k * 20 + 1)}]},
        ]
        for add_gen in (True, False):
            assert enc.encode_chat(chat, add_generation_prompt=add_gen) == tok.encode_chat(
                chat, add_generation_prompt=add_gen
            )
    assert enc.hits > enc.misses
    rng = random.Random(11)
    alphabet = "ab cd\n\t  ,.!'s 12é漢 <|im_start|><|im_end|>user\n"
    for _ in range(10):
        chat = [
            {"role": "system", "content": "".join(rng.choice(alphabet) for _ in range(2000))},
            {"role": "user", "content": "".join(rng.choice(alphabet) for _ in range(700))},
        ]
        assert enc.encode_chat(chat) == tok.encode_chat(chat)
