"""Go duration strings (``200ms``, ``1m30s``, ``-1.5h``, ``0``): the only parser kvgate has.

llm-d's and GIE's configuration files, plugin parameters and EPP flags all carry durations in
Go's ``time.ParseDuration`` grammar: a sequence of decimal numbers each with a unit (``ns``,
``us``/``µs``/``μs``, ``ms``, ``s``, ``m``, ``h``), optionally signed; a bare ``0`` is allowed.
Config sections, plugins and command-line flags all read them through :func:`parse_duration`.
"""

from __future__ import annotations

import argparse
import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration string, or None if it is not one."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    s = s[1:] if s[:1] in ("+", "-") else s
    if not s:
        return None
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Seconds as a short Go-style duration (``200ms``, ``2s``)."""
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def duration_arg(text: str) -> float:
    """An argparse ``type``: a Go duration, or a plain number of seconds; never negative."""
    try:
        value = float(text)
    except ValueError:
        parsed = parse_duration(text)
        if parsed is None:
            raise argparse.ArgumentTypeError(
                f"expected a duration like 50ms or 2s, got {text!r}"
            ) from None
        value = parsed
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, got {text!r}")
    return value
