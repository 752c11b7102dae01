"""Command-line flags for outlier detection and the retry budget (``kvgate serve``/``epp``).

Each flag is checked as it is parsed (argparse answers ``argument --flag: expected ...`` and
exits 2); combinations are checked by :func:`config_from_args`, which raises a
:class:`~kvgate.errors.ConfigError` with one line per wrong flag. Every flag defaults to None so
that a flag given together with ``--no-outlier-detection`` is reported instead of ignored.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kvgate.config.sections import format_duration, parse_duration
from kvgate.endpoints.outlier import FAILURE_OUTCOMES, OutlierConfig
from kvgate.endpoints.retry import RetryConfig
from kvgate.errors import ConfigError, Problem

_WHERE = "command line"

# flag -> the config field it sets (its argparse dest is the flag without dashes)
_OUTLIER_FLAGS: dict[str, str] = {
    "--outlier-consecutive-failures": "consecutive_failures",
    "--outlier-base-ejection-time": "base_ejection_s",
    "--outlier-max-ejection-time": "max_ejection_s",
    "--outlier-max-ejection-percent": "max_ejection_percent",
    "--outlier-min-hosts": "min_hosts",
    "--outlier-half-open-probes": "half_open_probes",
    "--outlier-failure-outcomes": "failure_outcomes",
}
_RETRY_FLAGS: dict[str, str] = {
    "--retry-budget-percent": "budget_percent",
    "--retry-min-concurrency": "min_retry_concurrency",
    "--retry-backoff-base": "backoff_base_s",
    "--retry-backoff-max": "backoff_max_s",
}


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    expected = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in 0..100, got {text!r}")
    return value


def _duration(positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if value is None or value < 0 or (positive and value == 0):
            sign = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(
                f"expected a Go duration {sign} such as 250ms, 30s or 5m, got {text!r}"
            )
        return value

    return parse


def _outcomes(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if not kinds or kinds - FAILURE_OUTCOMES:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {','.join(sorted(FAILURE_OUTCOMES))}, got {text!r}"
        )
    return kinds


def add_arguments(parser: argparse.ArgumentParser, *, retries: bool = True) -> None:
    """Add the outlier-detection and (with ``retries``) retry flags to ``parser``, one
    argument group each. ``kvgate epp`` leaves retries out: Envoy, not the EPP, re-sends."""
    d = OutlierConfig()
    o = parser.add_argument_group("outlier detection (circuit breaker per endpoint)")
    o.add_argument(
        "--no-outlier-detection",
        dest="outlier_detection",
        action="store_false",
        help="never eject an endpoint for failing requests",
    )
    o.add_argument(
        "--outlier-consecutive-failures",
        type=_int(1),
        default=None,
        metavar="N",
        help=f"failures in a row that eject an endpoint (default {d.consecutive_failures})",
    )
    o.add_argument(
        "--outlier-base-ejection-time",
        type=_duration(positive=True),
        default=None,
        metavar="DURATION",
        help="first ejection's length; the n-th lasts n times as long "
        f"(default {format_duration(d.base_ejection_s)})",
    )
    o.add_argument(
        "--outlier-max-ejection-time",
        type=_duration(positive=True),
        default=None,
        metavar="DURATION",
        help=f"longest ejection (default {format_duration(d.max_ejection_s)})",
    )
    o.add_argument(
        "--outlier-max-ejection-percent",
        type=_int(0, 100),
        default=None,
        metavar="PCT",
        help="most endpoints out at once, in percent; the first ejection is always allowed "
        f"(default {d.max_ejection_percent})",
    )
    o.add_argument(
        "--outlier-min-hosts",
        type=_int(0),
        default=None,
        metavar="N",
        help=f"endpoints always kept in rotation (default {d.min_hosts})",
    )
    o.add_argument(
        "--outlier-half-open-probes",
        type=_int(1),
        default=None,
        metavar="N",
        help=f"probe requests at once after an ejection (default {d.half_open_probes})",
    )
    o.add_argument(
        "--outlier-failure-outcomes",
        type=_outcomes,
        default=None,
        metavar="LIST",
        help="which attempt outcomes count as failures "
        f"(default {','.join(sorted(d.failure_outcomes))})",
    )
    if not retries:
        return
    r = RetryConfig()
    g = parser.add_argument_group("retry budget and back-off")
    g.add_argument(
        "--retry-budget-percent",
        type=_percent,
        default=None,
        metavar="PCT",
        help=f"retries in flight as a share of requests in flight (default {r.budget_percent:g})",
    )
    g.add_argument(
        "--retry-min-concurrency",
        type=_int(0),
        default=None,
        metavar="N",
        help=f"retries always allowed in flight (default {r.min_retry_concurrency})",
    )
    g.add_argument(
        "--retry-backoff-base",
        type=_duration(positive=False),
        default=None,
        metavar="DURATION",
        help=f"first retry waits up to this, doubling per retry "
        f"(default {format_duration(r.backoff_base_s)})",
    )
    g.add_argument(
        "--retry-backoff-max",
        type=_duration(positive=False),
        default=None,
        metavar="DURATION",
        help=f"longest back-off (default {format_duration(r.backoff_max_s)})",
    )


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """``{field: (flag, value)}`` for the flags the user gave."""
    out: dict[str, tuple[str, Any]] = {}
    for flag, field_name in flags.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            out[field_name] = (flag, value)
    return out


def config_from_args(args: argparse.Namespace) -> OutlierConfig:
    """The :class:`OutlierConfig` the flags describe; ConfigError names each wrong flag."""
    given = _given(args, _OUTLIER_FLAGS)
    enabled = bool(getattr(args, "outlier_detection", True))
    if not enabled and given:
        raise ConfigError(
            [
                Problem(_WHERE, flag, "has no effect with --no-outlier-detection; drop one")
                for flag, _ in given.values()
            ]
        )
    values = {name: value for name, (_, value) in given.items()}
    defaults = OutlierConfig()
    base = values.get("base_ejection_s", defaults.base_ejection_s)
    top = values.get("max_ejection_s", defaults.max_ejection_s)
    if top < base:
        flag = (
            "--outlier-max-ejection-time"
            if "max_ejection_s" in given
            else ("--outlier-base-ejection-time")
        )
        raise ConfigError(
            [
                Problem(
                    _WHERE,
                    flag,
                    f"the longest ejection ({format_duration(top)}) must be at least the base "
                    f"ejection time ({format_duration(base)})",
                )
            ]
        )
    return OutlierConfig(enabled=enabled, **values)


def retry_config_from_args(args: argparse.Namespace) -> RetryConfig:
    """The :class:`RetryConfig` the flags describe; ConfigError names each wrong flag."""
    given = _given(args, _RETRY_FLAGS)
    values = {name: value for name, (_, value) in given.items()}
    defaults = RetryConfig()
    base = values.get("backoff_base_s", defaults.backoff_base_s)
    top = values.get("backoff_max_s", defaults.backoff_max_s)
    if top < base:
        flag = "--retry-backoff-max" if "backoff_max_s" in given else "--retry-backoff-base"
        raise ConfigError(
            [
                Problem(
                    _WHERE,
                    flag,
                    f"the longest back-off ({format_duration(top)}) must be at least the base "
                    f"back-off ({format_duration(base)})",
                )
            ]
        )
    return RetryConfig(**values)


__all__ = ["add_arguments", "config_from_args", "retry_config_from_args"]
