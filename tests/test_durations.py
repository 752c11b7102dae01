"""kvgate.durations: Go's time.ParseDuration grammar, for configs, plugin parameters and flags."""

from __future__ import annotations

import argparse

import pytest

from kvgate.durations import duration_arg, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("200ms", 0.2),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("-2s", -2.0),
        ("+3ms", 0.003),
        (" 2s ", 2.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 ms", "ms", "1d", "2s3", "-", "+-1s", "1.2.3s", "--1s"])
def test_what_go_refuses_is_none(bad: str) -> None:
    assert parse_duration(bad) is None


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("2s", 2.0), ("0.5", 0.5)])
def test_flags_take_durations_or_plain_seconds(text: str, seconds: float) -> None:
    assert duration_arg(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 ms", "1d", "-1s", "-2"])
def test_bad_flags_are_one_line(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        duration_arg(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "200ms"), (2.0, "2s"), (1.5, "1.5s"), (0, "0s")]
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
