"""probabilistic-admitter: protected requests pass; sheddable ones are shed with llm-d's curve."""

from __future__ import annotations

import contextlib
import random

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.admitters.probabilistic_admitter import ProbabilisticRejected
from kvgate.scheduling.types import CycleState, Endpoint, Request
from plugins.kit import ctx, endpoint, make, request

TYPE = "probabilistic-admitter"


def _ep(name: str, waiting: int, kv: float) -> Endpoint:
    return endpoint(name, waiting_queue_size=waiting, kv_cache_usage_percent=kv, updated_at=1.0)


def _req(priority: int) -> Request:
    req = request()
    req.objective_priority = priority
    return req


def _shed_fraction(eps: list[Endpoint], n: int = 2000) -> float:
    c = ctx()
    c.rng = random.Random(3)
    admitter = make(TYPE, c=c)
    for _ in range(n):
        with contextlib.suppress(ProbabilisticRejected):
            admitter.produce(CycleState(), _req(-1), eps)
    return float(admitter.rejected) / n


def test_saturation_is_the_mean_of_the_worse_ratio_and_never_scraped_counts_full() -> None:
    a = make(TYPE)
    # a: max(2/5, 0.4/0.8) = 0.5; b: max(5/5, 0) = 1.0; never scraped: 1.0
    assert a.saturation([_ep("a", 2, 0.4), _ep("b", 5, 0.0)]) == pytest.approx(0.75)
    assert a.saturation([_ep("a", 0, 0.0), endpoint("b")]) == pytest.approx(0.5)
    assert a.shed_probability(0.15) == pytest.approx(0.0228, abs=1e-3)  # llm-d's table
    assert a.shed_probability(0.34) == 1.0


def test_sheds_sheddable_requests_along_the_curve() -> None:
    assert _shed_fraction([_ep("a", 0, 0.0)]) == 0.0
    # saturation 0.2 (kv 0.16 / 0.8): p = 0.2**5 * 300 = 0.096
    assert _shed_fraction([_ep("a", 0, 0.16)]) == pytest.approx(0.096, abs=0.02)
    assert _shed_fraction([_ep("a", 5, 0.9)]) == 1.0


def test_protected_requests_and_empty_pools_are_always_admitted() -> None:
    admitter = make(TYPE)
    full = [_ep("a", 50, 1.0)]
    admitter.produce(CycleState(), _req(0), full)
    admitter.produce(CycleState(), _req(2), full)
    admitter.produce(CycleState(), _req(-1), [])
    with pytest.raises(ProbabilisticRejected, match="saturation=") as err:
        admitter.produce(CycleState(), _req(-1), full)
    assert err.value.status == 429


@pytest.mark.parametrize("field", ["queueDepthThreshold", "kvCacheUtilThreshold", "power", "k"])
def test_parameters_must_be_positive(field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {field: 0})
    assert err.value.field == field
