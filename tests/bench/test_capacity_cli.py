"""``kvgate bench capacity``'s probe extent: a request bound, or rate x duration requests."""

from __future__ import annotations

import argparse

import pytest

from kvgate.bench import capacity_cli
from kvgate.bench.capacity_cli import build_capacity_workload, probe_request_bound


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    capacity_cli.register(parser.add_subparsers())
    return parser.parse_args(["capacity", *argv])


def test_a_duration_alone_bounds_probes_by_time_and_draws_enough_for_the_top_rate() -> None:
    args = _args("--probe-duration", "30", "--rate-hi", "16", "-W", "max_prompt_len=200")
    assert probe_request_bound(args.probe_requests, args.probe_duration) is None
    workload = build_capacity_workload(args)
    # 16 req/s x 30 s = 480 expected arrivals, plus six standard deviations (~131) and 10
    assert len(workload.sessions) == 622
    # a count given is a bound, and the draw, as before
    args = _args("--probe-duration", "30", "--probe-requests", "50", "-W", "max_prompt_len=200")
    assert probe_request_bound(args.probe_requests, args.probe_duration) == 50
    assert len(build_capacity_workload(args).sessions) == 50


def test_without_either_a_probe_is_300_requests_and_bad_values_are_refused() -> None:
    assert probe_request_bound(None, None) == 300
    with pytest.raises(SystemExit, match="--probe-duration: expected > 0"):
        probe_request_bound(None, 0.0)
    with pytest.raises(SystemExit, match="--probe-requests: expected >= 1"):
        probe_request_bound(0, 30.0)
