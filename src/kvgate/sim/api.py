"""Request validation and response bodies of the simulator's OpenAI API, shaped as vLLM's.

Validation raises :class:`kvgate.errors.RequestError` subclasses whose message and ``param``
name the bad field; vLLM's own wording is kept where clients match on it (the context-length
messages and ``The model `x` does not exist.``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from kvgate.errors import BadRequestError, RequestError

__all__ = ["ChunkWriter", "ParsedRequest", "parse_sampling", "usage_dict"]

_enc = msgspec.json.Encoder()


class ContextLengthError(BadRequestError):
    """The prompt (plus max_tokens) does not fit max_model_len."""


class NotFoundError(RequestError):
    status = 404
    error_type = "NotFoundError"


@dataclass(slots=True)
class ParsedRequest:
    """The sampling fields kvgate sim honours."""

    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: int | None  # as sent (None = until max_model_len / natural end)
    ignore_eos: bool
    stop: list[str]
    seed: int | None


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"'{name}' must be an integer, got {value!r}", param=name)
    return value


def parse_sampling(body: Mapping[str, Any], *, chat: bool) -> ParsedRequest:
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise BadRequestError(
            f"'n' must be 1 (kvgate sim generates one choice), got {n!r}", param="n"
        )
    max_tokens = _int_field(body, "max_tokens")
    if chat:
        mct = _int_field(body, "max_completion_tokens")
        if mct is not None:
            max_tokens = mct
    elif max_tokens is None and "max_tokens" not in body:
        max_tokens = 16  # OpenAI's (and vLLM's) default for /v1/completions
    if max_tokens is not None and max_tokens < 1:
        field = (
            "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        )
        raise BadRequestError(f"{field} must be at least 1, got {max_tokens}.", param=field)
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: list[str] = []
    elif isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = list(stop_raw)
    else:
        raise BadRequestError("'stop' must be a string or an array of strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequestError("'stream_options' must be an object", param="stream_options")
    if options and not stream:
        raise BadRequestError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequestError("'ignore_eos' must be a boolean", param="ignore_eos")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0
    ):
        raise BadRequestError("'temperature' must be a non-negative number", param="temperature")
    return ParsedRequest(
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        continuous_usage=bool(options.get("continuous_usage_stats", False)),
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        stop=stop,
        seed=_int_field(body, "seed"),
    )


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(
            "'messages' is required and must be a non-empty array", param="messages"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(
                f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequestError(
                f"'messages[{i}].content' must be a string or an array of content parts",
                param=f"messages[{i}].content",
            )
    return messages


def completion_prompt(body: Mapping[str, Any]) -> str | list[int]:
    """The prompt of /v1/completions: text, or token ids; one prompt only."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return list(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return str(prompt[0])
        if len(prompt) == 1 and isinstance(prompt[0], list):
            return completion_prompt({"prompt": prompt[0]})
        if len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
            raise BadRequestError(
                "'prompt' holds several prompts; kvgate sim serves one prompt per request",
                param="prompt",
            )
    raise BadRequestError(
        "'prompt' is required and must be a string, an array of token ids or a one-element array",
        param="prompt",
    )


def check_context_length(
    prompt_len: int, max_tokens: int | None, max_model_len: int, chat: bool
) -> None:
    if prompt_len >= max_model_len or (prompt_len == 0 and max_model_len <= 0):
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_len} input tokens. Please reduce the length of the input "
            f"{'messages' if chat else 'prompt'}.",
            param="messages" if chat else "prompt",
        )
    if max_tokens is not None and prompt_len + max_tokens > max_model_len:
        raise ContextLengthError(
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{prompt_len} input tokens ({max_tokens} > {max_model_len} - {prompt_len}).",
            param="max_tokens",
        )


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class ChunkWriter:
    """Pre-encoded SSE chunks of one streamed response (only the token text varies)."""

    __slots__ = ("_base", "_chat", "_head", "_mid", "created", "id", "model")

    def __init__(self, model: str, *, chat: bool, request_id: str | None = None) -> None:
        self._chat = chat
        self.id = request_id or (("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex)
        self.created = int(time.time())
        self.model = model
        base = (
            b'{"id":' + _enc.encode(self.id)
            + b',"object":"' + (b"chat.completion.chunk" if chat else b"text_completion")
            + b'","created":' + str(self.created).encode()
            + b',"model":' + _enc.encode(model)
        )  # fmt: skip
        self._base = base
        if chat:
            self._head = b"data: " + base + b',"choices":[{"index":0,"delta":{"content":'
            self._mid = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._head = b"data: " + base + b',"choices":[{"index":0,"text":'
            self._mid = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The first chat chunk (vLLM sends the role with empty content first)."""
        return (
            b"data: " + self._base
            + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
        )  # fmt: skip

    def token(self, text_json: bytes) -> bytes:
        return self._head + text_json + self._mid

    def last(
        self, text_json: bytes, finish_reason: str, usage: dict[str, Any] | None = None
    ) -> bytes:
        tail = b',"stop_reason":null}]'
        closing = b"}" if self._chat else b""
        usage_part = b',"usage":' + _enc.encode(usage) if usage is not None else b""
        return (
            self._head + text_json + closing
            + b',"logprobs":null,"finish_reason":' + _enc.encode(finish_reason)
            + tail + usage_part + b"}\n\n"
        )  # fmt: skip

    def token_with_usage(self, text_json: bytes, usage: dict[str, Any]) -> bytes:
        closing = b"}" if self._chat else b""
        stop = b"" if self._chat else b',"stop_reason":null'
        return (
            self._head + text_json + closing + b',"logprobs":null,"finish_reason":null'
            + stop + b'}],"usage":' + _enc.encode(usage) + b"}\n\n"
        )  # fmt: skip

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + self._base + b',"choices":[],"usage":' + _enc.encode(usage) + b"}\n\n"

    def full(self, text: str, finish_reason: str, usage: dict[str, Any]) -> bytes:
        """The non-streaming response body."""
        if self._chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        return _enc.encode(
            {
                "id": self.id,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage,
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            }
        )


DONE = b"data: [DONE]\n\n"


def join_texts(parts: Sequence[str]) -> str:
    return "".join(parts)
