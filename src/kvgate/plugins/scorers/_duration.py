"""Go ``time.ParseDuration`` strings (``"2m"``, ``"1m30s"``, ``"500ms"``) for plugin parameters."""

from __future__ import annotations

import re

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params

_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration_s(text: str) -> float | None:
    """Seconds in a Go duration string, or None if it is not one."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def get_duration_s(params: Params, key: str, default: str) -> float:
    """A duration parameter in seconds; errors name ``key``."""
    raw = params.get_str(key, default)
    seconds = parse_duration_s(raw)
    if seconds is None:
        raise PluginParameterError(key, f'expected a duration such as "2m" or "30s", got {raw!r}')
    return seconds
