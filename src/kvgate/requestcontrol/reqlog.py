"""Structured logs: one line per request with its pick and each scorer's score, for both front doors.

``--log-format json`` writes one JSON object per line (every kvgate log record, not only
requests); ``text`` writes ``time level logger message``. The request line
(:meth:`kvgate.requestcontrol.control.RequestControl.finish` writes it, whichever front door
served) carries ``door, request_id, model, target_model, path, status, endpoint, attempts,
queue_wait_ms, ttft_ms, duration_ms, error, prompt_tokens, completion_tokens, cached_tokens,
fairness_id, priority`` and ``scores`` = ``{endpoint: {"total": t, scorer: s, ...}}`` from the
primary profile's run, so a user can see why an endpoint was picked.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any

import msgspec

from kvgate.scheduling.types import SchedulingResult

REQUEST_LOGGER = "kvgate.requests"
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out["msg"] = record.getMessage()
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(
                f"{k}={_encoder.encode(v).decode() if isinstance(v, dict) else v}"
                for k, v in fields.items()
                if v is not None
            )
        return text


def configure_logging(log_format: str = "text", level: str = "INFO", stream: Any = None) -> None:
    """Route every ``kvgate.*`` logger to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("kvgate")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    if log_format == "json":
        use_json_request_log(handler.stream)
    else:
        global _FAST_BUFFER
        flush_request_log()
        _FAST_BUFFER = None
    # aiohttp's access log would duplicate our request line
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def scores_of(result: SchedulingResult | None) -> dict[str, dict[str, float]] | None:
    """``{endpoint: {"total": t, scorer: s}}`` of the primary profile, rounded for logs."""
    if result is None:
        return None
    try:
        primary = result.primary
    except LookupError:
        return None
    out: dict[str, dict[str, float]] = {}
    for scored in primary.scored:
        entry = {"total": round(scored.score, 4)}
        for name, value in scored.scores.items():
            entry[name] = round(value, 4)
        out[scored.endpoint.name] = entry
    return out


_log = logging.getLogger(REQUEST_LOGGER)
#: Buffered request lines are written out at least this often, and at once past _FLUSH_BYTES.
FLUSH_INTERVAL_S = 0.05
_FLUSH_BYTES = 64 * 1024


class _LineBuffer:
    """JSON request lines gathered in memory and written to the handler's stream in batches.

    One ``write`` per line on stderr is one system call per request (a third of the gateway's
    peak, docs/PERFORMANCE.md); batching writes at most every ``FLUSH_INTERVAL_S`` (or at
    64 KiB) keeps the lines in order and whole. A flush runs on the event loop that wrote the
    first pending line, and :func:`flush_request_log` runs at shutdown so nothing is lost.
    """

    __slots__ = ("chunks", "size", "stream", "timer")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.chunks: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, line: bytes) -> None:
        self.chunks.append(line)
        self.size += len(line)
        if self.size >= _FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self.timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.chunks:
            return
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        raw = getattr(self.stream, "buffer", None)
        try:
            if raw is not None:
                self.stream.flush()  # text written earlier through logging goes first
                raw.write(data)
                raw.flush()
            else:
                self.stream.write(data.decode())
                self.stream.flush()
        except (OSError, ValueError):  # a closed stream: logging itself would drop it too
            pass


def log_request(fields: dict[str, Any]) -> None:
    """Write the request line. In JSON mode it is encoded and buffered for the handler's
    stream (the logging module's record, caller lookup and formatter cost more than the rest
    of a request's bookkeeping); text mode goes through ``logging``."""
    if not _log.isEnabledFor(logging.INFO):
        return
    fast = _FAST_BUFFER
    if fast is not None:
        line = {"ts": round(time.time(), 6), "level": "info", "logger": REQUEST_LOGGER}
        line["msg"] = "request"
        line.update(fields)
        fast.add(_encoder.encode(line) + b"\n")
        return
    _log.info("request", extra={"fields": fields})


def use_json_request_log(stream: Any) -> None:
    """Write request lines as JSON to ``stream``, batched (``kvgate epp`` with zap's JSON
    encoder; ``configure_logging`` does the same for ``--log-format json``)."""
    global _FAST_BUFFER
    if _FAST_BUFFER is not None:
        _FAST_BUFFER.flush()
    _FAST_BUFFER = _LineBuffer(stream)
    atexit.register(flush_request_log)


def flush_request_log() -> None:
    """Write out buffered request lines now (at shutdown, and in tests before reading)."""
    if _FAST_BUFFER is not None:
        _FAST_BUFFER.flush()


_FAST_BUFFER: _LineBuffer | None = None
