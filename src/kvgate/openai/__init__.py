"""OpenAI's wire shapes, shared by both front doors and the simulator (which import no gateway).

* :mod:`.requests` — a request body -> the scheduler's :class:`~kvgate.scheduling.types.Request`
  (400 on anything the scheduler cannot read), the path -> request kind, routing-header hygiene.
* :mod:`.multimodal` — a chat's image, video and audio parts and their hashes (E/P/D).
* :mod:`.errors` — OpenAI's JSON error body and the terminal SSE error event.
* :mod:`.usage` — ``usage`` from a JSON answer or a passing event stream.
"""

from kvgate.openai.errors import error_body, request_error_body, sse_error_event
from kvgate.openai.requests import (
    build_request,
    parse_body,
    request_kind_for_path,
    strip_routing_headers,
)
from kvgate.openai.usage import Usage, UsageReader, usage_from_json, usage_from_sse

__all__ = [
    "Usage",
    "UsageReader",
    "build_request",
    "error_body",
    "parse_body",
    "request_error_body",
    "request_kind_for_path",
    "sse_error_event",
    "strip_routing_headers",
    "usage_from_json",
    "usage_from_sse",
]
