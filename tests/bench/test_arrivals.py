"""Arrival processes of the runner: Poisson statistics, constant spacing, rate ladders."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

import pytest

from kvgate.bench.runner import LoadSpec, arrival_times


def test_poisson_gaps_are_exponential() -> None:
    times = [t for t, _ in arrival_times(LoadSpec(rates=(8.0,), seed=11), 20000)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential(rate): mean 1/rate, variance 1/rate^2
    assert statistics.mean(gaps) == pytest.approx(1 / 8, rel=0.03)
    assert statistics.variance(gaps) == pytest.approx(1 / 64, rel=0.06)
    # counts per 1 s window are Poisson: mean == variance == rate
    counts = Counter(int(t) for t in times)
    per_window = [counts.get(i, 0) for i in range(int(times[-1]))]
    assert statistics.mean(per_window) == pytest.approx(8, rel=0.03)
    assert statistics.variance(per_window) == pytest.approx(8, rel=0.1)


def test_poisson_is_seeded() -> None:
    a = list(arrival_times(LoadSpec(rates=(3.0,), seed=1), 50))
    b = list(arrival_times(LoadSpec(rates=(3.0,), seed=1), 50))
    c = list(arrival_times(LoadSpec(rates=(3.0,), seed=2), 50))
    assert a == b and a != c
    assert a[0] == (0.0, 0)


def test_constant_rate_is_evenly_spaced() -> None:
    times = [t for t, _ in arrival_times(LoadSpec(mode="constant", rates=(4.0,)), 5)]
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_ladder_by_duration_offers_each_rate_for_its_stage() -> None:
    spec = LoadSpec(rates=(2.0, 10.0, 30.0), stage_duration_s=100.0, seed=4)
    arrivals = list(arrival_times(spec, 4000))
    per_stage = Counter(stage for _, stage in arrivals)
    assert per_stage[0] == pytest.approx(200, rel=0.15)
    assert per_stage[1] == pytest.approx(1000, rel=0.08)
    for t, stage in arrivals:
        assert stage == min(int(t // 100), 2)
    times = [t for t, _ in arrivals]
    assert times == sorted(times)


def test_ladder_by_requests() -> None:
    spec = LoadSpec(mode="constant", rates=(1.0, 10.0), stage_requests=3)
    arrivals = list(arrival_times(spec, 5))
    assert [s for _, s in arrivals] == [0, 0, 0, 1, 1]
    assert [t for t, _ in arrivals] == pytest.approx([0.0, 1.0, 2.0, 2.1, 2.2])


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        list(arrival_times(LoadSpec(rates=(0.0,)), 1))
