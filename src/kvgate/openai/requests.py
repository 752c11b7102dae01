"""OpenAI request parsing: body -> :class:`kvgate.scheduling.types.Request`.

Only what the scheduler needs is read from the body: model, prompt or messages, cache salt,
priority. Errors are :class:`kvgate.errors.RequestError` subclasses whose status and message
become OpenAI's JSON error shape via :func:`kvgate.openai.errors.error_body`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

from kvgate.errors import BadRequestError
from kvgate.openai.multimodal import mm_items
from kvgate.scheduling.types import HEADER_REQUEST_ID, ROUTING_HEADERS, Request, RequestKind

_decoder = msgspec.json.Decoder()

CHAT_PATH_SUFFIX = "/chat/completions"
COMPLETIONS_PATH_SUFFIX = "/completions"


def new_request_id() -> str:
    """A random (version 4) UUID in its text form, as ``new_request_id()`` makes it at a
    third of the cost (one per request without an ``x-request-id``)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def request_kind_for_path(path: str) -> RequestKind | None:
    """``chat`` for .../chat/completions, ``completions`` for .../completions, else None."""
    path = path.rstrip("/")
    if path.endswith(CHAT_PATH_SUFFIX):
        return "chat"
    if path.endswith(COMPLETIONS_PATH_SUFFIX):
        return "completions"
    return None


def strip_routing_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased copy of ``headers`` without any client-sent routing header."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in ROUTING_HEADERS}


def request_headers(
    headers: Mapping[str, str], request_id: str | None
) -> tuple[dict[str, str], str]:
    """Lower-cased ``headers`` without client-sent routing headers, and the request id: the
    front door's ``request_id`` (written into them), else the client's ``x-request-id``,
    else a new one. For parsers that build the Request themselves."""
    clean = strip_routing_headers(headers)
    if request_id is not None:
        clean[HEADER_REQUEST_ID] = request_id
    return clean, request_id or clean.get(HEADER_REQUEST_ID) or new_request_id()


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400 that says what is wrong."""
    if not body:
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        parsed = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec recurses once per nesting level
        raise BadRequestError("request body is nested too deeply to be a request") from exc
    if not isinstance(parsed, dict):
        raise BadRequestError("request body must be a JSON object")
    return parsed


def build_request(
    kind: RequestKind,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    body_size: int = 0,
    request_id: str | None = None,
) -> Request:
    """Validate the fields the scheduler reads and build the :class:`Request`.

    ``headers`` must already be lower-cased and stripped of routing headers.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required and must be a non-empty string", param="model")
    prompt: str | None = None
    messages = None
    has_parts = False  # a chat with list contents, which may carry images, video, audio
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError(
                "'messages' is required and must be a non-empty array", param="messages"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequestError(
                    f"'messages[{i}]' must be an object with a string 'role'",
                    param=f"messages[{i}]",
                )
            if isinstance(message.get("content"), list):
                has_parts = True
    else:
        raw_prompt = body.get("prompt")
        if isinstance(raw_prompt, list):
            if raw_prompt and all(isinstance(p, str) for p in raw_prompt):
                raw_prompt = "".join(raw_prompt)
            elif raw_prompt and all(isinstance(p, int) for p in raw_prompt):
                raw_prompt = None  # token ids: kept below
            else:
                raise BadRequestError(
                    "'prompt' must be a string, an array of strings or an array of token ids",
                    param="prompt",
                )
        elif not isinstance(raw_prompt, str):
            raise BadRequestError("'prompt' is required and must be a string", param="prompt")
        prompt = raw_prompt
    token_ids = None
    if kind == "completions" and prompt is None:
        token_ids = tuple(int(t) for t in body["prompt"])
    salt = body.get("cache_salt")
    priority = body.get("priority", 0)
    rid = request_id or headers.get(HEADER_REQUEST_ID) or new_request_id()
    return Request(
        request_id=rid,
        model=model,
        kind=kind,
        prompt=prompt,
        messages=messages,
        headers=headers,
        token_ids=token_ids,
        cache_salt=salt if isinstance(salt, str) else None,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        body=body,
        body_size=body_size,
        mm_items=mm_items(messages) if has_parts and messages is not None else (),
    )


#: vLLM's OpenAI-server routes besides completions and chat that take a JSON body with a
#: ``model``; kvgate routes them by model and schedules them on the prompt they carry.
OTHER_ROUTES: tuple[str, ...] = (
    "/v1/responses",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/invocations",
)
#: Body fields that carry the text a route works on, in the order they are looked for.
_TEXT_FIELDS = ("prompt", "input", "query", "text_1", "text", "documents")
#: ``upstream_body`` in Request.extra: the client's body, when the scheduler reads a view of it.
UPSTREAM_BODY = "upstream_body"


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def routing_view(body: dict[str, Any]) -> tuple[RequestKind, dict[str, Any]]:
    """The request kind and the body the scheduler reads, for a route other than completions
    and chat: chat when the body has ``messages`` (``/tokenize``, ``/v1/responses`` with a
    list of messages as ``input``), else completions on the text the route carries (a prompt,
    ``input``, a query, ...), or an empty prompt when it carries none the scheduler can hash
    (token ids, images). ``model`` is validated as for completions."""
    if isinstance(body.get("messages"), list):
        return "chat", body
    items = body.get("input")
    if isinstance(items, list) and items and all(isinstance(i, dict) for i in items):
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            messages.append({"role": "system", "content": instructions})
        for item in items:
            role = item.get("role")
            messages.append({"role": role if isinstance(role, str) else "user", **item})
        return "chat", {**body, "messages": messages}
    for field in _TEXT_FIELDS:
        text = _text_of(body.get(field))
        if text is not None:
            return "completions", {**body, "prompt": text}
    return "completions", {**body, "prompt": ""}
