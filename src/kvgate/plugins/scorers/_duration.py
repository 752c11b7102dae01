"""Duration parameters of plugins (``"2m"``, ``"1m30s"``, ``"500ms"``), read with
:func:`kvgate.durations.parse_duration`; negative ones are refused."""

from __future__ import annotations

from kvgate.durations import parse_duration
from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params


def get_duration_s(params: Params, key: str, default: str) -> float:
    """A duration parameter in seconds; errors name ``key``."""
    raw = params.get_str(key, default)
    seconds = parse_duration(raw)
    if seconds is None or seconds < 0:
        raise PluginParameterError(key, f'expected a duration such as "2m" or "30s", got {raw!r}')
    return seconds
