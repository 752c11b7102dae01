"""Structured logs: one line per request with its pick and each scorer's score.

``--log-format json`` writes one JSON object per line (every kvgate log record, not only
requests); ``text`` writes ``time level logger message``. The request line carries
``request_id, model, path, status, endpoint, attempts, ttft_ms, duration_ms, error,
prompt_tokens, cached_tokens`` and ``scores`` = ``{endpoint: {"total": t, scorer: s, ...}}``
from the primary profile's run, so a user can see why an endpoint was picked.
"""

from __future__ import annotations

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
    global _FAST_STREAM
    _FAST_STREAM = handler.stream if log_format == "json" else None
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


def log_request(fields: dict[str, Any]) -> None:
    """Write the request line. In JSON mode it is encoded and written directly to the
    handler's stream (the logging module's record, caller lookup and formatter cost more
    than the rest of a request's bookkeeping); text mode goes through ``logging``."""
    if not _log.isEnabledFor(logging.INFO):
        return
    fast = _FAST_STREAM
    if fast is not None:
        line = {"ts": round(time.time(), 6), "level": "info", "logger": REQUEST_LOGGER}
        line["msg"] = "request"
        line.update(fields)
        fast.write(_encoder.encode(line).decode() + "\n")
        return
    _log.info("request", extra={"fields": fields})


_FAST_STREAM: Any = None
