"""The retry budget (Envoy's semantics) and full-jitter back-off."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from kvgate.endpoints.retry import RetryBudget, RetryConfig, backoff_s


def test_defaults_follow_envoy() -> None:
    cfg = RetryConfig()
    assert (cfg.budget_percent, cfg.min_retry_concurrency) == (20.0, 3)
    assert (cfg.backoff_base_s, cfg.backoff_max_s) == (0.025, 0.25)


def test_min_concurrency_when_quiet() -> None:
    budget = RetryBudget(RetryConfig())
    budget.request_started()
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert budget.denied == 1 and budget.active_retries == 3
    budget.release()
    assert budget.try_acquire()


def test_percent_of_active_requests() -> None:
    reg = CollectorRegistry()
    budget = RetryBudget(RetryConfig(budget_percent=20, min_retry_concurrency=1), registry=reg)
    for _ in range(50):
        budget.request_started()
    assert budget.limit == 10
    granted = sum(budget.try_acquire() for _ in range(15))
    assert granted == 10 and budget.denied == 5
    assert reg.get_sample_value("kvgate_retry_budget_denied_total") == 5
    assert reg.get_sample_value("kvgate_retries_in_flight") == 10
    for _ in range(45):
        budget.request_finished()
    assert budget.limit == 1 and not budget.try_acquire()  # 10 in flight, limit fell to 1
    for _ in range(10):
        budget.release()
    assert budget.active_retries == 0 and budget.try_acquire()


def test_zero_budget_denies_everything() -> None:
    budget = RetryBudget(RetryConfig(budget_percent=0, min_retry_concurrency=0))
    budget.request_started()
    assert not budget.try_acquire() and budget.denied == 1


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (500, 0.25)]:
        draws = [backoff_s(attempt, 0.025, 0.25, rng) for _ in range(200)]
        assert all(0 <= d < ceiling for d in draws)
        assert max(draws) > ceiling * 0.9  # spread over the whole range
    assert backoff_s(3, 0.0, 1.0, rng) == 0.0
    with pytest.raises(ValueError, match="attempt: expected >= 1, got 0"):
        backoff_s(0, 0.025, 0.25, rng)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"budget_percent: expected 0\.\.100, got 120"):
        RetryConfig(budget_percent=120)
    with pytest.raises(ValueError, match="backoff_max_s: expected >= backoff_base_s"):
        RetryConfig(backoff_base_s=1.0, backoff_max_s=0.5)
