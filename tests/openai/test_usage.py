"""OpenAI ``usage`` from JSON answers and passing event streams."""

from __future__ import annotations

import json

from kvgate.openai.usage import MAX_BUFFERED_BYTES, UsageReader, usage_from_json, usage_from_sse

USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}


def test_usage_from_json() -> None:
    u = usage_from_json(json.dumps({"usage": USAGE}).encode())
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (7, 2, 4)
    assert usage_from_json(b"not json") is None
    assert usage_from_json(b'{"usage": null}') is None
    assert usage_from_json(b'{"usage": {"prompt_tokens": "x"}}') is None
    assert usage_from_json(b"[" * 100_000) is None  # never a RecursionError
    plain = usage_from_json(b'{"usage": {"prompt_tokens": 3}}')
    assert plain is not None and plain.completion_tokens is None and plain.cached_tokens is None


def test_usage_from_sse_takes_the_last_usage_event() -> None:
    tail = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    u = usage_from_sse(tail)
    assert u is not None and u.prompt_tokens == 9 and u.cached_tokens is None
    assert usage_from_sse(b"data: [DONE]\n\n") is None


def test_reader_on_a_stream_split_anywhere() -> None:
    stream = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b": keep-alive comment\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}\n\n'
        b"data: [DONE]\n\n"
    )
    for size in (1, 7, len(stream)):
        reader = UsageReader("text/event-stream; charset=utf-8")
        for i in range(0, len(stream), size):
            reader.feed(stream[i : i + size])
        usage = reader.finish()
        assert reader.streaming and reader.done
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 3)


def test_reader_on_a_json_answer_and_past_its_cap() -> None:
    reader = UsageReader("application/json")
    raw = json.dumps({"choices": [], "usage": USAGE}).encode()
    reader.feed(raw[:10])
    reader.feed(b"")
    reader.feed(raw[10:])
    usage = reader.finish()
    assert not reader.streaming and usage is not None and usage.cached_tokens == 4
    big = UsageReader("application/json")
    big.feed(b" " * (MAX_BUFFERED_BYTES + 1))
    big.feed(raw)
    assert big.finish() is None  # too big to hold: passed through, not parsed
