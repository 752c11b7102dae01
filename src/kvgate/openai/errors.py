"""OpenAI's error shape: JSON bodies for HTTP errors and the terminal SSE error event.

Every front door and the simulator answer errors through these, so a client sees one shape
(``{"error": {"message", "type", "param", "code"}}``) whoever answered.
"""

from __future__ import annotations

import math

import msgspec

from kvgate.errors import RequestError, SchedulingError


def error_body(
    message: str,
    *,
    status: int,
    error_type: str | None = None,
    param: str | None = None,
    code: str | int | None = None,
) -> bytes:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    if error_type is None:
        error_type = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
        }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return msgspec.json.encode(
        {
            "error": {
                "message": message,
                "type": error_type,
                "param": param,
                "code": code if code is not None else status,
            }
        }
    )


def request_error_body(exc: RequestError) -> bytes:
    return error_body(
        exc.message, status=exc.status, error_type=exc.error_type, param=exc.param, code=exc.code
    )


def sse_error_event(message: str, status: int = 502) -> bytes:
    """A terminal SSE event in OpenAI's error shape, then ``[DONE]`` (as vLLM ends a failed
    stream); the openai client raises an APIError on it."""
    return b"data: " + error_body(message, status=status) + b"\n\ndata: [DONE]\n\n"


def scheduling_error_reply(
    exc: SchedulingError, retry_after_s: float | None = None
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` for a request that got no endpoint (503, 429, flow
    control's rejections). ``retry_after_s`` overrides the error's own hint for 503s."""
    headers: dict[str, str] = {}
    hint = exc.retry_after_s
    if exc.status == 503 and retry_after_s is not None:
        hint = retry_after_s
    if hint is not None:
        headers["Retry-After"] = str(max(1, math.ceil(hint)))
    dropped = getattr(exc, "dropped_reason", None)
    if dropped:  # flow control's answers name why, as llm-d's do
        headers["x-llm-d-request-dropped-reason"] = dropped
    message = str(exc) or exc.reason
    if exc.status == 429 and exc.reason == "scheduling_failed":
        message = f"scheduling failed: {message}"
    return exc.status, headers, error_body(message, status=exc.status, code=exc.code)
