"""Request control for ``passthrough-parser``: bodies are not parsed, requests carry no prompt.

llm-d-router's passthrough parser keeps the body as raw bytes. :class:`PassthroughRequestControl`
is :class:`~kvgate.requestcontrol.control.RequestControl` with another ``parse``: the request
is scheduled with no model (candidates are not narrowed by model) and no tokens (prefix and
token scorers score 0), while its headers act as usual (fairness id, objective,
RequestHeaderProcessors, header filters). The front doors forward the client's body unchanged,
because the request has no parsed ``body`` to rewrite. The choice is made once, when request
control is built, so the OpenAI path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvgate.openai.requests import request_headers
from kvgate.requestcontrol.control import RequestContext, RequestControl
from kvgate.scheduling.types import (
    Request,
    RequestKind,
)


class PassthroughRequestControl(RequestControl):
    """See the module docstring."""

    passthrough = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models_of = None  # no model is read, so none narrows the candidates

    def parse(
        self,
        ctx: RequestContext,
        kind: RequestKind,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str | None = None,
        parsed: dict[str, Any] | None = None,
    ) -> Request:
        """Headers -> the scheduler's Request; the body is counted, never read."""
        clean, rid = request_headers(headers, request_id)
        request = Request(rid, "", kind, headers=clean, token_ids=(), body_size=len(body))
        ctx.request = request
        self._classify(ctx, request, clean)
        return request
