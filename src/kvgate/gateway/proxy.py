"""Pieces of the forwarding path that do no I/O: headers, usage parsing, SSE error events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from kvgate.gateway.openai import error_body
from kvgate.scheduling.types import ROUTING_HEADERS

#: Never forwarded in either direction (RFC 9110 §7.6.1) or recomputed by the HTTP stack.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int | None:
        details = self.prompt_tokens_details
        return None if details is None else details.cached_tokens


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)


def usage_from_json(body: bytes) -> Usage | None:
    """The ``usage`` object of a JSON completion body, or None."""
    try:
        return _usage_decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def usage_from_sse(tail: bytes) -> Usage | None:
    """The last ``usage`` found in the ``data:`` events of an SSE stream's tail."""
    if b'"usage"' not in tail:
        return None
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and b'"usage"' in line:
            usage = usage_from_json(line[5:].strip())
            if usage is not None:
                return usage
    return None


def upstream_headers(
    client_headers: Iterable[tuple[str, str]],
    extra: Mapping[str, str],
    *,
    drop_authorization: bool,
) -> dict[str, str]:
    """Headers for the model server: the client's minus hop-by-hop and routing ones, plus
    the scheduler's (``extra`` wins)."""
    out: dict[str, str] = {}
    for name, value in client_headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in ROUTING_HEADERS:
            continue
        if drop_authorization and lower == "authorization":
            continue
        out[lower] = value
    out.update(extra)
    return out


def downstream_headers(upstream: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers of the model server's response that go back to the client."""
    out: dict[str, str] = {}
    for name, value in upstream:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in ROUTING_HEADERS or lower in ("server", "date"):
            continue
        out[name] = value
    return out


def sse_error_event(message: str, status: int = 502) -> bytes:
    """A terminal SSE event in OpenAI's error shape, then ``[DONE]`` (as vLLM ends a failed
    stream); the openai client raises an APIError on it."""
    return b"data: " + error_body(message, status=status) + b"\n\ndata: [DONE]\n\n"
