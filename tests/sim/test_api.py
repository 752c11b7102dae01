"""The simulator's OpenAI API through the official ``openai`` client, plus error answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from support.sim import SimHandle, start_sim


def post(sim: SimHandle, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        sim.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def sim(module_spawn: Any) -> SimHandle:
    return start_sim(module_spawn, model="m1", speed=20, max_model_len=512)


def test_openai_client_chat_completions_and_streaming(sim: SimHandle) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="none")
    models = client.models.list()
    assert [m.id for m in models.data] == ["m1"]

    chat = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "Say something"}], max_tokens=7
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 7
    assert chat.choices[0].message.content

    comp = client.completions.create(model="m1", prompt="Once upon a time", max_tokens=5)
    assert comp.usage is not None and comp.usage.completion_tokens == 5
    assert comp.choices[0].text

    stream = client.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) == 6
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == chat.usage.prompt_tokens
    # The same prompt again hits the prefix cache: full blocks only, the last one recomputed.
    details = chunks[-1].usage.prompt_tokens_details
    assert details is not None
    p = chat.usage.prompt_tokens
    assert details.cached_tokens == (p - 1) // 16 * 16

    cstream = client.completions.create(
        model="m1", prompt="Once upon a time", max_tokens=4, stream=True
    )
    pieces = list(cstream)
    assert len(pieces) == 4 and pieces[-1].choices[0].finish_reason == "length"


def test_bad_requests_answered_with_status_and_field(sim: SimHandle) -> None:
    status, body = post(
        sim,
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 404
    assert body["error"]["message"] == "The model `nope` does not exist. Valid aliases: m1."
    assert body["error"]["type"] == "NotFoundError" and body["error"]["param"] == "model"
    status, body = post(
        sim,
        "/v1/chat/completions",
        {"model": "m1", "messages": [{"role": "user", "content": "x"}], "n": 2},
    )
    assert status == 400 and body["error"]["param"] == "n"
    status, body = post(sim, "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": 0})
    assert status == 400 and "max_tokens" in body["error"]["message"]
    status, body = post(sim, "/v1/chat/completions", {"model": "m1"})
    assert status == 400 and body["error"]["param"] == "body.messages"
    assert body["error"]["type"] == "Bad Request" and "Field required" in body["error"]["message"]
    status, body = post(
        sim, "/v1/completions", {"model": "m1", "prompt": "word " * 600, "max_tokens": 4}
    )
    assert status == 400
    assert body["error"]["message"].startswith(
        "This model's maximum context length is 512 tokens. However, your prompt contains at "
        "least 513 input tokens"
    )
    assert body["error"]["param"] == "input_tokens"
    status, body = post(
        sim, "/v1/completions", {"model": "m1", "prompt": "hello", "max_tokens": 600}
    )
    assert status == 400 and body["error"]["message"] == (
        "max_tokens=600 cannot be greater than max_model_len=512. Please request fewer output "
        "tokens. (parameter=max_tokens, value=600)"
    )
    assert body["error"]["code"] == 400
    status, body = post(
        sim, "/v1/completions", {"model": "m1", "prompt": "word " * 300, "max_tokens": 300}
    )
    assert status == 400 and "However, you requested 300 output tokens" in body["error"]["message"]

    client = openai.OpenAI(base_url=sim.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m1", prompt="x", max_tokens=2, n=3)


def test_tokenize_matches_chat_usage(sim: SimHandle) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    status, tok = post(sim, "/tokenize", {"model": "m1", "messages": messages})
    assert status == 200 and tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 512
    status, chat = post(
        sim, "/v1/chat/completions", {"model": "m1", "messages": messages, "max_tokens": 2}
    )
    assert status == 200 and chat["usage"]["prompt_tokens"] == tok["count"]


def test_stop_and_echo(module_spawn: Any) -> None:
    sim = start_sim(module_spawn, model="e", speed=20, mode="echo")
    status, body = post(
        sim,
        "/v1/chat/completions",
        {
            "model": "e",
            "messages": [{"role": "user", "content": "alpha beta gamma"}],
            "max_tokens": 50,
        },
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "alpha beta gamma"
    assert body["choices"][0]["finish_reason"] == "stop"
    status, body = post(
        sim,
        "/v1/completions",
        {"model": "e", "prompt": "one two three four", "max_tokens": 50, "stop": " three"},
    )
    assert status == 200
    assert body["choices"][0]["text"] == "one two"
    assert body["choices"][0]["stop_reason"] == " three"  # vLLM names the stop string
    assert body["choices"][0]["finish_reason"] == "stop"


# The requests behind tests/sim/data/vllm-0.32-responses.json (recorded from real vLLM 0.32).
_MSGS = [
    {
        "role": "user",
        "content": "Hello there, what is the capital of France? " + "alpha beta gamma " * 20,
    }
]
VLLM_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": _MSGS, "max_tokens": 4, "ignore_eos": True}),
    "chat_stream": (
        "/v1/chat/completions",
        {"messages": _MSGS, "max_tokens": 3, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True}},
    ),
    "chat_stream_nousage": (
        "/v1/chat/completions",
        {"messages": _MSGS, "max_tokens": 2, "ignore_eos": True, "stream": True},
    ),
    "comp": ("/v1/completions", {"prompt": "Once upon a time " * 10, "max_tokens": 3, "ignore_eos": True}),
    "comp_stream": (
        "/v1/completions",
        {"prompt": "Once upon a time " * 10, "max_tokens": 3, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True}},
    ),
    "tokenize": ("/tokenize", {"prompt": "hello world"}),
    "err_model": ("/v1/chat/completions", {"model": "nope", "messages": _MSGS}),
    "err_neg": ("/v1/chat/completions", {"messages": _MSGS, "max_tokens": -1}),
    "err_n": ("/v1/chat/completions", {"messages": _MSGS, "n": "x"}),
    "err_long": ("/v1/completions", {"prompt": "word " * 2100, "max_tokens": 1}),
    "err_maxtok": ("/v1/completions", {"prompt": "hello", "max_tokens": 5000}),
    "err_nomsg": ("/v1/chat/completions", {}),
}  # fmt: skip


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return "null" if value is None else type(value).__name__


def _events(text: str) -> list[Any]:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.fixture(scope="module")
def vllm_like(module_spawn: Any) -> SimHandle:
    return start_sim(
        module_spawn,
        model="smollm2",
        speed=50,
        block_size=32,
        max_model_len=2048,
        num_gpu_blocks=1456,
    )


@pytest.mark.parametrize("case", sorted(VLLM_REQUESTS))
def test_same_json_as_recorded_vllm(vllm_like: SimHandle, case: str) -> None:
    from pathlib import Path

    recorded = json.loads(
        (Path(__file__).parent / "data" / "vllm-0.32-responses.json").read_text()
    )[case]
    path, body = VLLM_REQUESTS[case]
    req = urllib.request.Request(
        vllm_like.url + path,
        data=json.dumps({"model": "smollm2", **body}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, ctype, text = (
                resp.status,
                resp.headers.get("Content-Type"),
                resp.read().decode(),
            )
    except urllib.error.HTTPError as exc:
        status, ctype, text = exc.code, exc.headers.get("Content-Type"), exc.read().decode()
    assert status == recorded["status"]
    assert ctype == recorded["content_type"]
    if "stream" in case:
        real, sim = _events(recorded["body"]), _events(text)
        assert [_shape(e) for e in sim] == [_shape(e) for e in real]
        for a, b in zip(real, sim, strict=True):  # same key order, too
            if isinstance(a, dict):
                assert list(a) == list(b)
    else:
        real, sim = json.loads(recorded["body"]), json.loads(text)
        assert _shape(sim) == _shape(real) and list(sim) == list(real)
    if case.startswith("err_") and case != "err_model":
        assert sim == real  # vLLM's exact wording
    if case == "tokenize":
        assert sim == real  # the same tokenizer as the real engine


def _stream_chunks(sim: SimHandle, body: dict[str, Any]) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        sim.url + "/v1/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    chunks = []
    with urllib.request.urlopen(req, timeout=10) as resp:
        for raw in resp:
            line = raw.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_stream_interval_batches_tokens_as_vllm(module_spawn: Any) -> None:
    """vLLM 0.32's stream_interval: the first token alone, then >= N tokens a chunk, the
    rest at the end; the request may raise the server's --stream-interval, not lower it."""
    sim = start_sim(module_spawn, "--stream-interval", "3", model="si", speed=20)
    body = {
        "model": "si",
        "prompt": "count with me",
        "max_tokens": 14,
        "ignore_eos": True,
        "seed": 7,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    status, whole = post(sim, "/v1/completions", {**body, "stream_options": None})
    assert status == 200
    for asked, interval in ((None, 3), (1, 3), (5, 5)):
        extra = {} if asked is None else {"stream_interval": asked}
        chunks = [c for c in _stream_chunks(sim, {**body, **extra}) if c["choices"]]
        counts = [c["usage"]["completion_tokens"] for c in chunks]
        sizes = [b - a for a, b in zip([0, *counts], counts, strict=False)]
        assert counts[0] == 1 and counts[-1] == 14, (asked, counts)
        assert all(size >= interval for size in sizes[1:-1]), (asked, sizes)
        assert sizes[-1] > 0
        assert len(chunks) <= 2 + (14 - 1) // interval
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    status, err = post(sim, "/v1/completions", {**body, "stream": True, "stream_interval": 0})
    assert status == 400 and err["error"]["param"] == "body.stream_interval"
