"""The outlier-detection and retry flags: parsing, defaults, one-line errors."""

from __future__ import annotations

import argparse

import pytest

from kvgate.endpoints.outlier import OutlierConfig
from kvgate.endpoints.outlier_cli import add_arguments, config_from_args, retry_config_from_args
from kvgate.endpoints.retry import RetryConfig
from kvgate.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvgate serve")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_no_flags_give_the_defaults() -> None:
    args = parse()
    assert config_from_args(args) == OutlierConfig()
    assert retry_config_from_args(args) == RetryConfig()


def test_every_flag_sets_its_field() -> None:
    args = parse(
        "--outlier-consecutive-failures=3",
        "--outlier-base-ejection-time=1s500ms",
        "--outlier-max-ejection-time=1m",
        "--outlier-max-ejection-percent=50",
        "--outlier-min-hosts=0",
        "--outlier-half-open-probes=2",
        "--outlier-failure-outcomes=5xx,connect",
        "--retry-budget-percent=25.5",
        "--retry-min-concurrency=0",
        "--retry-backoff-base=10ms",
        "--retry-backoff-max=2s",
    )
    assert config_from_args(args) == OutlierConfig(
        consecutive_failures=3,
        base_ejection_s=1.5,
        max_ejection_s=60.0,
        max_ejection_percent=50,
        min_hosts=0,
        half_open_probes=2,
        failure_outcomes=frozenset({"5xx", "connect"}),
    )
    assert retry_config_from_args(args) == RetryConfig(
        budget_percent=25.5, min_retry_concurrency=0, backoff_base_s=0.01, backoff_max_s=2.0
    )
    assert not config_from_args(parse("--no-outlier-detection")).enabled


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--outlier-consecutive-failures", "0"],
            "--outlier-consecutive-failures: expected an integer >= 1, got '0'",
        ),
        (
            ["--outlier-base-ejection-time", "30"],
            "--outlier-base-ejection-time: expected a Go duration > 0",
        ),
        (
            ["--outlier-max-ejection-percent", "101"],
            "--outlier-max-ejection-percent: expected an integer in 0..100",
        ),
        (
            ["--outlier-failure-outcomes", "5xx,4xx"],
            "--outlier-failure-outcomes: expected a comma list of 5xx,connect,timeout",
        ),
        (
            ["--retry-budget-percent", "lots"],
            "--retry-budget-percent: expected a percentage in 0..100",
        ),
        (["--retry-backoff-base=-1s"], "--retry-backoff-base: expected a Go duration >= 0"),
    ],
)
def test_bad_values_name_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kvgate serve: error: argument ") and message in err


def test_combinations_are_checked() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_args(parse("--outlier-max-ejection-time=10s"))
    assert str(exc.value) == (
        "command line: --outlier-max-ejection-time: the longest ejection (10s) must be at least "
        "the base ejection time (30s)"
    )
    with pytest.raises(ConfigError, match=r"^command line: --retry-backoff-base: "):
        retry_config_from_args(parse("--retry-backoff-base=1s"))


def test_flags_with_detection_off_are_not_ignored() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_args(parse("--no-outlier-detection", "--outlier-min-hosts=2"))
    assert str(exc.value) == (
        "command line: --outlier-min-hosts: has no effect with --no-outlier-detection; drop one"
    )
