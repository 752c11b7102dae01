"""The request a handler receives and the responses it returns (no I/O of their own).

:class:`HttpRequest` is a fully received request: headers in a plain ``dict`` keyed by the
lower-cased name (repeated headers joined with ``", "``, RFC 9110 §5.3), the whole body. A
handler returns a :class:`Response` (whole body, written in one go with a
``Content-Length``) or a :class:`StreamResponse` it has prepared and written to (chunked
transfer coding on HTTP/1.1, or a body ended by closing the connection on HTTP/1.0).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from kvgate.http1.server import Connection

#: ``status -> reason phrase`` for the status line.
REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
REASONS[499] = "Client Closed Request"


class HttpRequest:
    """One request as received. ``too_large``: the body passed the server's limit and was
    not read (``body`` is empty; answer 413, the connection closes after the answer)."""

    __slots__ = (
        "_conn",
        "_query",
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "too_large",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        version: str,
        keep_alive: bool,
        conn: Connection | None,
        *,
        too_large: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.too_large = too_large
        self._conn = conn
        self._query: dict[str, str] | None = None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def query(self) -> Mapping[str, str]:
        """Query parameters (the first of a repeated name wins)."""
        if self._query is None:
            query: dict[str, str] = {}
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                query.setdefault(name, value)
            self._query = query
        return self._query

    async def read(self) -> bytes:
        return self.body


class Response:
    """A whole response: status, headers (any case; ``Content-Length`` is set from the
    body) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {}
        if content_type is not None:
            self.headers["Content-Type"] = content_type


class StreamResponse:
    """A response written piece by piece: :meth:`prepare` sends the head, :meth:`write`
    each piece as it comes (waiting while the client reads slower than it is written),
    :meth:`write_eof` the end. After the client left, writes raise ConnectionResetError."""

    __slots__ = ("_chunked", "_conn", "_eof", "headers", "status")

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self._conn: Connection | None = None
        self._chunked = True
        self._eof = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: HttpRequest) -> None:
        if self._conn is not None:
            return
        conn = request._conn
        if conn is None:
            raise RuntimeError("this request has no connection to answer on")
        self._conn = conn
        self._chunked = request.version != "1.0"
        conn.write_stream_head(self, request, chunked=self._chunked)

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("write before prepare")
        if self._eof:
            raise RuntimeError("write after write_eof")
        if not data:
            return
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drain()

    async def write_eof(self) -> None:
        conn = self._conn
        if conn is None or self._eof:
            return
        self._eof = True
        if self._chunked:
            conn.write(b"0\r\n\r\n")
        await conn.drain()
