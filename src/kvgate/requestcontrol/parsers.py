"""Request control for claiming parsers (``vertexai-parser``, ``vllmgrpc-parser``).

llm-d routes each request to the parser whose claimed path suffix is the longest match for
its path; an explicit ``requestHandler.parsers`` list gains no fallback, so a path no listed
parser claims is refused (400). :class:`ClaimingRequestControl` is
:class:`~kvgate.requestcontrol.control.RequestControl` with that dispatch in ``parse``: a
claimed path is read by its parser (a gRPC body), any other path by kvgate's OpenAI parsing
when ``openai-parser`` is listed. The chosen parser also reads the response's usage
(:class:`ClaimedUsageReader`). Built only when a claiming parser is configured, so the OpenAI
path pays nothing for it.

Claiming parsers read gRPC over HTTP/2, which reaches only ``kvgate epp`` (Envoy hands it
the request through ext_proc); :func:`check_door` refuses them for ``kvgate serve`` at start-up,
and :func:`grpc_health_probe` gives ``kvgate epp``'s scraper a gRPC health probe when the
endpoints speak nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kvgate.errors import BadRequestError, KvgateError
from kvgate.openai.requests import build_request, request_headers
from kvgate.openai.usage import Usage
from kvgate.plugins.base import Plugin
from kvgate.plugins.requesthandling import ClaimingParser
from kvgate.requestcontrol.control import RequestContext, RequestControl
from kvgate.scheduling.types import Request, RequestKind

if TYPE_CHECKING:
    from kvgate.config.datalayer import RequestHandlerConfig
    from kvgate.endpoints.grpc_health import GrpcHealthProbe

#: ``Request.extra`` key: the claiming parser that read the request.
PARSED_BY = "kvgate.parsed-by"

#: Non-streamed gRPC responses above this are not kept for usage (they still pass through).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def claiming_parsers(plugins: Sequence[Plugin], names: Sequence[str]) -> list[ClaimingParser]:
    """The configured claiming parsers, in ``requestHandler.parsers`` order."""
    by_name = {p.name: p for p in plugins}
    return [p for n in names if isinstance(p := by_name.get(n), ClaimingParser)]


def check_door(parsers: Sequence[ClaimingParser], door: str, speaks: str) -> None:
    """Refuse parsers whose protocol ``door`` cannot carry (one line, naming both)."""
    for parser in parsers:
        if parser.protocol == "h2c":
            raise KvgateError(
                f"requestHandler.parsers: {parser.name!r} ({parser.type_name}) parses gRPC "
                f"(h2c) requests, which {door} cannot receive ({speaks}); run kvgate epp "
                "behind Envoy for it"
            )


class ClaimingRequestControl(RequestControl):
    """See the module docstring; ``openai`` is whether other paths are parsed as OpenAI."""

    def __init__(
        self, *args: Any, parsers: Sequence[ClaimingParser], openai: bool, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # longest suffix first, as llm-d resolves a path
        self._claims = sorted(
            ((suffix, p) for p in parsers for suffix in p.claims), key=lambda c: -len(c[0])
        )
        self.openai = openai

    def parser_for(self, path: str) -> ClaimingParser | None:
        for suffix, parser in self._claims:
            if path.endswith(suffix):
                return parser
        return None

    def claims(self, path: str) -> bool:
        return not self.openai or self.parser_for(path) is not None

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
        parser = self.parser_for(ctx.path)
        if parser is None:
            if not self.openai:
                raise BadRequestError(
                    f"no configured request parser claims path {ctx.path!r} (claimed: "
                    f"{', '.join(s for s, _ in self._claims)})"
                )
            return super().parse(ctx, kind, body, headers, request_id=request_id, parsed=parsed)
        read = parser.parse_request(ctx.path, body)
        clean, rid = request_headers(headers, request_id)
        if read.view is not None:
            request = build_request(
                read.kind, read.view, clean, body_size=len(body), request_id=rid
            )
            request.body = None  # the wire body is protobuf: never re-encoded as JSON
        else:
            request = Request(
                rid,
                "",
                read.kind,
                prompt=read.prompt if read.token_ids is None else None,
                headers=clean,
                token_ids=read.token_ids,
                body_size=len(body),
            )
        request.extra[PARSED_BY] = parser
        ctx.request = request
        ctx.model = request.model
        ctx.stream = read.stream
        self._classify(ctx, request, clean)
        return request


class ClaimedUsageReader:
    """:class:`kvgate.openai.usage.UsageReader`'s interface over a claiming parser: the
    response's gRPC messages are kept (up to :data:`MAX_RESPONSE_BYTES`) and read at the end.

    ``streaming`` is always True: a gRPC response is a stream of messages closed by trailers,
    so a front door relays it as it comes and never holds its headers.
    """

    streaming = True

    def __init__(self, parser: ClaimingParser) -> None:
        self.parser = parser
        self.done = False
        self._chunks: list[bytes] | None = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if self._chunks is None:
            return
        self._size += len(chunk)
        if self._size > MAX_RESPONSE_BYTES:
            self._chunks = None
            return
        self._chunks.append(chunk)

    def finish(self) -> Usage | None:
        if not self._chunks:
            return None
        body = b"".join(self._chunks)
        self._chunks = []
        return self.parser.response_usage(body)


def usage_reader_for(request: Request | None) -> ClaimedUsageReader | None:
    """The usage reader for a request a claiming parser read, else None."""
    if request is None:
        return None
    parser = request.extra.get(PARSED_BY)
    return ClaimedUsageReader(parser) if parser is not None else None


def grpc_health_probe(
    plugins: Sequence[Plugin], handler: RequestHandlerConfig | None
) -> GrpcHealthProbe | None:
    """The scraper's health probe when every listed parser reads one gRPC-only API that has
    a health RPC (``vllmgrpc-parser`` alone): its endpoints answer no ``GET /health``."""
    if handler is None or not handler.claiming or handler.openai:
        return None
    parsers = claiming_parsers(plugins, handler.claiming)
    methods = {p.health_method for p in parsers}
    if len(methods) != 1 or None in methods:
        return None
    from kvgate.endpoints.grpc_health import GrpcHealthProbe

    return GrpcHealthProbe(parsers[0].health_method or "", parsers[0].healthy)
