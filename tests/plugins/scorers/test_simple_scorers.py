"""queue, running-requests-size, kv-cache-utilization, load-aware and lora-affinity scorers."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.registry import default_registry
from plugins.kit import ctx, endpoint, make, request, scheduler, score


def test_queue_scorer_min_max() -> None:
    eps = [
        endpoint("a", waiting_queue_size=0),
        endpoint("b", waiting_queue_size=5),
        endpoint("c", waiting_queue_size=10),
    ]
    assert score(make("queue-scorer"), eps) == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_queue_scorer_all_equal_is_one() -> None:
    eps = [endpoint("a", waiting_queue_size=4), endpoint("b", waiting_queue_size=4)]
    assert score(make("queue-scorer"), eps) == {"a": 1.0, "b": 1.0}


def test_running_requests_size_scorer() -> None:
    eps = [endpoint("a", running_requests_size=8), endpoint("b", running_requests_size=2)]
    assert score(make("running-requests-size-scorer"), eps) == {"a": 0.0, "b": 1.0}


def test_kv_cache_utilization_and_alias() -> None:
    eps = [endpoint("a", kv_cache_usage_percent=0.25), endpoint("b", kv_cache_usage_percent=1.0)]
    assert score(make("kv-cache-utilization-scorer"), eps) == {"a": 0.75, "b": 0.0}
    assert default_registry().canonical("kv-cache-scorer") == "kv-cache-utilization-scorer"
    assert score(make("kv-cache-scorer"), eps) == {"a": 0.75, "b": 0.0}


def test_load_aware_scorer() -> None:
    eps = [endpoint(f"q{q}", waiting_queue_size=q) for q in (0, 1, 64, 128, 500)]
    got = score(make("load-aware-scorer"), eps)
    assert got == {"q0": 0.5, "q1": 0.5 * (1 - 1 / 128), "q64": 0.25, "q128": 0.0, "q500": 0.0}
    assert score(make("load-aware-scorer", {"threshold": 4}), eps)["q1"] == 0.375


def test_load_aware_rejects_non_positive_threshold() -> None:
    with pytest.raises(PluginParameterError) as err:
        make("load-aware-scorer", {"threshold": 0})
    assert err.value.field == "threshold"


def test_lora_affinity_levels() -> None:
    eps = [
        endpoint("active", active_models=frozenset({"lora-x"}), max_active_models=1),
        endpoint("room", active_models=frozenset({"lora-y"}), max_active_models=4),
        endpoint(
            "waiting",
            active_models=frozenset({"lora-y"}),
            waiting_models=frozenset({"lora-x"}),
            max_active_models=2,
        ),
        endpoint("full", active_models=frozenset({"lora-y", "lora-z"}), max_active_models=2),
    ]
    got = score(make("lora-affinity-scorer"), eps, request(target_model="lora-x"))
    assert got == {"active": 1.0, "room": 0.8, "waiting": 0.6, "full": 0.0}


def test_weights_add_up_through_the_scheduler() -> None:
    # a: short queue, full cache; b: long queue, empty cache. queue weight decides.
    eps = [
        endpoint("a", waiting_queue_size=0, kv_cache_usage_percent=0.9),
        endpoint("b", waiting_queue_size=9, kv_cache_usage_percent=0.1),
    ]
    c = ctx()
    queue, kv = make("queue-scorer", c=c), make("kv-cache-utilization-scorer", c=c)
    assert scheduler([(queue, 2.0), (kv, 1.0)], c=c).schedule(request(), eps).target.name == "a"
    result = scheduler([(queue, 0.5), (kv, 2.0)], c=c).schedule(request(), eps)
    assert result.target.name == "b"
    totals = {s.endpoint.name: s.score for s in result.primary.scored}
    assert totals == pytest.approx({"a": 0.5 * 1.0 + 2.0 * 0.1, "b": 0.5 * 0.0 + 2.0 * 0.9})


@pytest.mark.parametrize(
    "type_name",
    [
        "queue-scorer",
        "running-requests-size-scorer",
        "kv-cache-utilization-scorer",
        "load-aware-scorer",
        "lora-affinity-scorer",
    ],
)
def test_scores_in_range_on_varied_states(type_name: str) -> None:
    eps = [
        endpoint(
            f"e{i}",
            waiting_queue_size=(i * 37) % 200,
            running_requests_size=(i * 11) % 50,
            kv_cache_usage_percent=(i % 10) / 9,
            active_models=frozenset({"m"} if i % 3 == 0 else ()),
            max_active_models=i % 4,
        )
        for i in range(20)
    ]
    got = score(make(type_name), eps, request(target_model="m"))
    assert set(got) == {e.name for e in eps}
    assert all(0.0 <= v <= 1.0 for v in got.values())
