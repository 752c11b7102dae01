"""The latency models: exact recovery of a linear cost, forgetting, priors, readiness."""

from __future__ import annotations

import random

import pytest

from kvgate.latency import EndpointLoad, LatencyPredictor, RecursiveLeastSquares, load_prior
from kvgate.latency.features import TPOT_FEATURES, TTFT_FEATURES, tpot_features, ttft_features


def _load(rng: random.Random) -> EndpointLoad:
    prompt = rng.randint(1, 8000)
    return EndpointLoad(
        prompt_tokens=prompt,
        cached_tokens=rng.randint(0, prompt),
        inflight_requests=rng.randint(0, 40),
        inflight_tokens=rng.randint(0, 50_000),
        waiting=rng.randint(0, 20),
        running=rng.randint(0, 64),
        kv_usage=rng.random(),
    )


def test_rls_recovers_a_known_linear_cost_exactly() -> None:
    rng = random.Random(1)
    true_w = [5.0, 20.0, 0.8, 1.5, 18.0, 4.0, 7.0, 3.0, 12.0]
    model = RecursiveLeastSquares([0.0] * 9, forgetting=1.0, initial_variance=1e8)
    for _ in range(60):
        x = ttft_features(_load(rng))
        model.update(x, sum(w * v for w, v in zip(true_w, x, strict=True)))
    assert model.weights == pytest.approx(true_w, rel=1e-6, abs=1e-6)


def test_predictor_learns_ttft_and_tpot_and_predicts_them() -> None:
    rng = random.Random(2)
    true_ttft = [6.0, 23.0, 0.85, 1.8, 23.0, 4.6, 9.0, 2.0, 30.0]
    true_tpot = [8.2, 4.6, 1.0, 0.5, 3.0, 0.2]
    predictor = LatencyPredictor(min_samples=20)
    assert not predictor.ready
    for _ in range(300):
        load = _load(rng)
        ttft = sum(w * v for w, v in zip(true_ttft, ttft_features(load), strict=True))
        tpot = sum(w * v for w, v in zip(true_tpot, tpot_features(load), strict=True))
        predictor.observe(load, ttft, tpot)
    assert predictor.ready
    for _ in range(20):
        load = _load(rng)
        want_ttft = sum(w * v for w, v in zip(true_ttft, ttft_features(load), strict=True))
        want_tpot = sum(w * v for w, v in zip(true_tpot, tpot_features(load), strict=True))
        ttft, tpot = predictor.predict(load)
        assert ttft == pytest.approx(want_ttft, rel=1e-4)
        assert tpot == pytest.approx(want_tpot, rel=1e-4)


def test_forgetting_follows_a_workload_that_changes() -> None:
    rng = random.Random(3)
    model = RecursiveLeastSquares([0.0] * 9, forgetting=0.98)
    for slope in (10.0, 40.0):  # the per-token cost quadruples halfway
        for _ in range(400):
            x = ttft_features(_load(rng))
            model.update(x, 5.0 + slope * x[1])
    assert model.weights[1] == pytest.approx(40.0, rel=1e-3)


def test_covariance_stays_bounded_when_a_feature_never_moves() -> None:
    model = RecursiveLeastSquares([0.0] * 9, forgetting=0.9, max_trace=1e6)
    rng = random.Random(4)
    for _ in range(2000):
        load = _load(rng)
        x = list(ttft_features(load))
        x[8] = 0.0  # kv_usage never excited: P would grow as 0.9**-n without the cap
        model.update(x, 3.0 + 2.0 * x[1])
    assert sum(model.p[i][i] for i in range(9)) <= 1e6 * (1 + 1e-9)
    assert model.weights[1] == pytest.approx(2.0, rel=1e-6)


def test_calibrated_prior_prices_a_lone_prefill_like_the_profile() -> None:
    prior = load_prior("llama-3.1-8b-h100")
    assert prior.calibrated and len(prior.ttft_weights) == len(TTFT_FEATURES)
    assert len(prior.tpot_weights) == len(TPOT_FEATURES)
    predictor = LatencyPredictor(prior)
    assert predictor.ready  # calibrated: usable before any sample
    ttft, tpot = predictor.predict(EndpointLoad(2000, 0, 0, 0, 0, 0, 0.0))
    # a + b·n + c·n² of the profile
    assert ttft == pytest.approx(6.440338 + 0.023602133 * 2000 + 8.466947e-07 * 2000**2)
    assert tpot == pytest.approx(8.212995 + 0.464234)  # a batch of one


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown latency profile 'nope' \(known: .*qwen3"):
        load_prior("nope")


def test_predictions_are_never_negative() -> None:
    predictor = LatencyPredictor()
    predictor.ttft.weights = [-5.0] + [0.0] * 8
    predictor.tpot.weights = [-1.0] + [0.0] * 5
    assert predictor.predict(EndpointLoad(10, 0, 0, 0, 0, 0, 0.0)) == (0.0, 0.0)
