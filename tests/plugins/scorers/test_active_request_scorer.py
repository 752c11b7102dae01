from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import ProfileRunResult, ResponseInfo, SchedulingResult
from plugins.kit import FakeClock, ctx, endpoint, make, request, score

A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def _sent(plugin: object, request_id: str, *targets: object) -> None:
    results = {f"p{i}": ProfileRunResult((t,)) for i, t in enumerate(targets)}
    plugin.pre_request(request(request_id=request_id), SchedulingResult(results, "p0"), {})  # type: ignore[attr-defined]


def test_counts_in_flight_and_scores_relative_to_max() -> None:
    plugin = make("active-request-scorer")
    assert score(plugin, [A, B, C]) == {"a": 1.0, "b": 1.0, "c": 1.0}
    _sent(plugin, "r1", A)
    _sent(plugin, "r2", A)
    _sent(plugin, "r3", B)
    assert score(plugin, [A, B, C]) == {"a": 0.0, "b": 0.5, "c": 1.0}
    plugin.response_complete(request(request_id="r1"), ResponseInfo(status=200), A)
    plugin.response_complete(
        request(request_id="r2"), ResponseInfo(status=500, error="upstream_5xx"), A
    )
    assert score(plugin, [A, B, C]) == {"a": 1.0, "b": 0.0, "c": 1.0}


def test_every_profile_target_counts() -> None:
    plugin = make("active-request-scorer")
    _sent(plugin, "r1", A, B)  # e.g. decode and prefill
    assert plugin.count("a") == 1 and plugin.count("b") == 1


def test_ttl_expiry_with_injected_clock() -> None:
    clock = FakeClock()
    plugin = make("active-request-scorer", {"requestTimeout": "30s"}, c=ctx(clock=clock))
    _sent(plugin, "r1", A)
    clock.advance(20)
    _sent(plugin, "r2", A)
    clock.advance(10.5)  # r1 expired, r2 not
    assert plugin.count("a") == 1
    clock.advance(20)
    assert plugin.count("a") == 0
    # completing an expired request is harmless and never goes negative
    plugin.response_complete(request(request_id="r1"), ResponseInfo(status=200), A)
    assert plugin.count("a") == 0


def test_default_timeout_is_two_minutes() -> None:
    clock = FakeClock()
    plugin = make("active-request-scorer", c=ctx(clock=clock))
    _sent(plugin, "r1", A)
    clock.advance(119)
    assert plugin.count("a") == 1
    clock.advance(2)
    assert plugin.count("a") == 0


@pytest.mark.parametrize("value", ["2 minutes", 120, "", "5x"])
def test_bad_timeout_names_the_field(value: object) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("active-request-scorer", {"requestTimeout": value})
    assert err.value.field == "requestTimeout"


def test_go_durations() -> None:
    from kvgate.durations import parse_duration as parse_duration_s

    assert parse_duration_s("1m30s") == 90.0
    assert parse_duration_s("250ms") == 0.25
    assert parse_duration_s("1.5h") == 5400.0
    assert parse_duration_s("0") == 0.0
    assert parse_duration_s("m") is None


def test_max_is_over_the_candidates_scored() -> None:
    """llm-d-router normalises by the busiest candidate, not the busiest endpoint tracked:
    a decode profile's scores do not depend on the prefill endpoints' load."""
    plugin = make("active-request-scorer")
    for i in range(4):
        _sent(plugin, f"p{i}", C)  # C (say, a prefill endpoint) is the busiest tracked
    _sent(plugin, "d1", A)
    _sent(plugin, "d2", A)
    _sent(plugin, "d3", B)
    assert score(plugin, [A, B]) == {"a": 0.0, "b": 0.5}
