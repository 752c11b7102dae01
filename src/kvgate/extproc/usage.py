"""Reading OpenAI ``usage`` from a model server's response as it streams past.

Server-sent events (``text/event-stream``) are parsed line by line as chunks arrive, so the
usage of a streamed completion is known when ``data: [DONE]`` passes, without holding the
stream. Any other body is buffered (up to a cap) and read once at the end. GIE does the same
in its response handler; the counts feed the ResponseComplete hooks and token histograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()

#: Non-streamed bodies above this are not parsed for usage (they still pass through).
MAX_BUFFERED_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


class UsageReader:
    """Feed response body chunks; :attr:`usage` holds the last usage seen, :attr:`done` is
    True once an SSE stream sent ``[DONE]``."""

    __slots__ = ("_buffer", "_overflow", "_pending", "done", "streaming", "usage")

    def __init__(self, content_type: str) -> None:
        self.streaming = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.usage = Usage()
        self.done = False
        self._pending = b""  # SSE: the unfinished last line
        self._buffer: list[bytes] = []  # JSON: the body so far
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.streaming:
            if not self._overflow:
                self._buffer.append(chunk)
                if sum(len(c) for c in self._buffer) > MAX_BUFFERED_BYTES:
                    self._buffer.clear()
                    self._overflow = True
            return
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._sse_line(line)

    def finish(self) -> Usage:
        """Call at end of stream; parses what is buffered."""
        if self.streaming:
            if self._pending:
                self._sse_line(self._pending)
                self._pending = b""
        elif self._buffer:
            self._read_usage(b"".join(self._buffer))
            self._buffer.clear()
        return self.usage

    def _sse_line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        if b'"usage"' in payload:
            self._read_usage(payload)

    def _read_usage(self, payload: bytes) -> None:
        try:
            obj = _decoder.decode(payload)
        except msgspec.DecodeError:
            return
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return
        self.usage = Usage(
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            cached_tokens=_int((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
            if isinstance(usage.get("prompt_tokens_details"), dict | None)
            else None,
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
