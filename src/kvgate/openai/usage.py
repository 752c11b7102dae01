"""OpenAI ``usage`` from a model server's answer: one parser for every front door.

A JSON body is read once at its end (:func:`usage_from_json`). Server-sent events
(``text/event-stream``) are read as they pass: :class:`UsageReader` keeps only the last
``data:`` event that mentions ``usage`` and decodes it at the end, so a relayed stream is never
held and a long stream costs one substring search per line. Counts feed the ResponseComplete
hooks, the token metrics and the request log.
"""

from __future__ import annotations

import msgspec

#: Non-streamed bodies above this are not parsed for usage (they still pass through).
MAX_BUFFERED_BYTES = 8 * 1024 * 1024


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    """OpenAI's usage object; fields vLLM leaves out stay None."""

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
    """The ``usage`` object of a JSON completion body (or one SSE payload), or None."""
    try:
        return _usage_decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
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


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


class UsageReader:
    """Feed response body chunks as they pass; :meth:`finish` returns the usage (or None).

    :attr:`done` is True once an SSE stream sent ``[DONE]``.
    """

    __slots__ = ("_buffer", "_buffered", "_last_usage", "_pending", "done", "streaming")

    def __init__(self, content_type: str) -> None:
        self.streaming = is_event_stream(content_type)
        self.done = False
        self._pending = b""  # SSE: the unfinished last line
        self._last_usage = b""  # SSE: payload of the last data: line that mentions usage
        self._buffer: list[bytes] | None = []  # JSON: the body so far (None past the cap)
        self._buffered = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.streaming:
            if self._buffer is not None:
                self._buffer.append(chunk)
                self._buffered += len(chunk)
                if self._buffered > MAX_BUFFERED_BYTES:
                    self._buffer = None
            return
        data = self._pending + chunk if self._pending else chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._sse_line(line)

    def finish(self) -> Usage | None:
        """Call at end of stream; decodes what was kept."""
        if self.streaming:
            if self._pending:
                self._sse_line(self._pending)
                self._pending = b""
            return usage_from_json(self._last_usage) if self._last_usage else None
        if not self._buffer:
            return None
        body = b"".join(self._buffer)
        self._buffer = []
        return usage_from_json(body)

    def _sse_line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            line = line.strip()
            if not line.startswith(b"data:"):
                return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
        elif b'"usage"' in payload and b'"usage":null' not in payload:
            self._last_usage = payload
