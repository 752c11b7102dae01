"""llm-d's request-handling plugins (``requestHandler.parsers``).

Two Protocols: every parser is a ``RequestParser`` (``parses`` names the API family), and a
``ClaimingParser`` also claims request paths by suffix, as llm-d's parsers do, and reads the
bodies sent there itself (``vertexai-parser``, ``vllmgrpc-parser``: gRPC). kvgate's request
control (kvgate.requestcontrol.parsers) sends a request to the parser claiming the longest
suffix of its path; the OpenAI parsing of kvgate.openai serves the other paths when
``openai-parser`` is listed (or no parser is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kvgate.openai.usage import Usage
from kvgate.plugins.base import Plugin
from kvgate.scheduling.types import RequestKind


@runtime_checkable
class RequestParser(Plugin, Protocol):
    """A request parser; ``parses`` names the API family kvgate's front doors parse for it."""

    @property
    def parses(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What a claiming parser read from one request body for the scheduler.

    ``view`` is an OpenAI-shaped body (``model`` and ``messages`` or ``prompt``) when the
    protocol carries one (Vertex AI wraps OpenAI JSON); otherwise the request has no model and
    schedules on ``prompt`` or ``token_ids`` (vLLM's gRPC API). ``view`` None and both None:
    nothing to schedule on (an unclaimed method), as passthrough.
    """

    kind: RequestKind = "completions"
    view: dict[str, Any] | None = None
    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    stream: bool = False


@runtime_checkable
class ClaimingParser(RequestParser, Protocol):
    """A parser that claims paths (suffixes) and reads their bodies itself.

    ``protocol`` is the wire it reads (``"h2c"``: gRPC over HTTP/2, which only ``kvgate epp``
    behind Envoy receives). ``parse_request`` raises :class:`kvgate.errors.BadRequestError`
    for a body it cannot read; ``response_usage`` reads a whole response body (None: none).
    ``health_method`` is the API's unary health RPC (None: the servers answer HTTP health),
    whose serialized reply ``healthy`` judges (kvgate.endpoints.grpc_health).
    """

    @property
    def claims(self) -> tuple[str, ...]: ...

    @property
    def protocol(self) -> str: ...

    def parse_request(self, path: str, body: bytes) -> ParsedRequest: ...

    def response_usage(self, body: bytes) -> Usage | None: ...

    @property
    def health_method(self) -> str | None: ...

    def healthy(self, reply: bytes) -> bool: ...
