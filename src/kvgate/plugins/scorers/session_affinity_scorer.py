"""``session-affinity-scorer`` (llm-d): keep a client's session on the endpoint that served it.

* Parameters: none.
* Token: the ``x-session-token`` header is the standard base64 of the endpoint name
  (``<namespace>/<pod>-rank-<i>`` under Kubernetes, ``host:port`` for static endpoints).
* Formula: the endpoint the request's token names scores 1, every other 0 (all 0 without a
  valid token).
* ResponseComplete: sets ``x-session-token`` on the client's response to the token of the
  endpoint that served it, so the client can send it back.
* State: none (the token travels with the client).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import (
    HEADER_SESSION_TOKEN,
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
)

TYPE = "session-affinity-scorer"


def session_token(endpoint_name: str) -> str:
    """The token that routes a session back to ``endpoint_name``."""
    return base64.b64encode(endpoint_name.encode()).decode("ascii")


def endpoint_from_token(token: str) -> str | None:
    """The endpoint name in a token, or None if the token is not valid base64 UTF-8."""
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, ValueError):
        return None


class SessionAffinityScorer:
    """1 for the endpoint named by the session token (Scorer + ResponseComplete)."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        token = request.session_token
        wanted = endpoint_from_token(token) if token else None
        return {e.name: 1.0 if e.name == wanted else 0.0 for e in endpoints}

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        response.headers[HEADER_SESSION_TOKEN] = session_token(endpoint.name)


def create(name: str, params: Params, ctx: PluginContext) -> SessionAffinityScorer:
    return SessionAffinityScorer(name)
