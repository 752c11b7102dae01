"""kvgate's request-path histogram against prometheus_client's on the same observations."""

from __future__ import annotations

import math

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from kvgate.requestcontrol.histogram import Histogram

BUCKETS = (0.001, 0.0025, 0.01, 0.1, 1.0, 10.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus_client adds a *_created sample per child; kvgate's histogram has none
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def _both(
    labelnames: tuple[str, ...] = ("model",),
) -> tuple[object, Histogram, CollectorRegistry, CollectorRegistry]:
    lib_registry, our_registry = CollectorRegistry(), CollectorRegistry()
    lib = prometheus_client.Histogram(
        "req_seconds", "doc", labelnames, buckets=BUCKETS, registry=lib_registry
    )
    ours = Histogram("req_seconds", "doc", labelnames, buckets=BUCKETS, registry=our_registry)
    return lib, ours, lib_registry, our_registry


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([*BUCKETS, 0.0, -0.0, -1.0, math.inf, -math.inf, math.nan]),
    st.floats(min_value=0, max_value=20),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", 'q"uote\\']), values), max_size=60))
def test_same_exposition_as_prometheus_client(observations: list[tuple[str, float]]) -> None:
    lib, ours, lib_registry, our_registry = _both()
    for label, value in observations:
        lib.labels(label).observe(value)  # type: ignore[attr-defined]
        ours.labels(label).observe(value)
    assert _exposition(our_registry) == _exposition(lib_registry)


def test_bucket_edges_are_inclusive_and_nan_only_reaches_the_sum() -> None:
    lib, ours, lib_registry, our_registry = _both(())
    for value in (*BUCKETS, math.nan, math.inf, -math.inf):
        lib.observe(value)  # type: ignore[attr-defined]
        ours.observe(value)
    assert _exposition(our_registry) == _exposition(lib_registry)


def test_aliases_export_one_set_of_counts_under_each_name() -> None:
    registry = CollectorRegistry()
    h = Histogram(
        "kvgate_x_seconds", "ours", ["p"], buckets=BUCKETS, registry=registry,
        aliases=[("gie_x_seconds", "theirs")],
    )  # fmt: skip
    h.labels("a").observe(0.002)
    assert registry.get_sample_value("kvgate_x_seconds_count", {"p": "a"}) == 1
    assert registry.get_sample_value("gie_x_seconds_count", {"p": "a"}) == 1
    assert registry.get_sample_value("gie_x_seconds_bucket", {"p": "a", "le": "0.0025"}) == 1
    assert registry.get_sample_value("gie_x_seconds_bucket", {"p": "a", "le": "0.001"}) == 0


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        Histogram("h", "d", buckets=(1.0, 0.5))
    h = Histogram("h", "d", ["a"], buckets=BUCKETS)
    with pytest.raises(ValueError, match="label values"):
        h.labels()
    with pytest.raises(ValueError, match="has labels"):
        h.observe(1.0)


def test_an_alias_with_fewer_labels_sums_over_the_rest_as_a_library_histogram_would() -> None:
    lib_registry, our_registry = CollectorRegistry(), CollectorRegistry()
    lib = prometheus_client.Histogram(
        "gie", "doc", ["model"], buckets=BUCKETS, registry=lib_registry
    )
    ours = Histogram(
        "llmd", "doc", ["model", "priority"], buckets=BUCKETS, registry=our_registry,
        aliases=[("gie", "doc", ["model"])],
    )  # fmt: skip
    for model, priority, value in [
        ("a", "0", 0.002),
        ("a", "1", 0.2),
        ("b", "0", 5.0),
        ("a", "1", 0.0),
    ]:
        lib.labels(model).observe(value)
        ours.labels(model, priority).observe(value)
    gie = [
        line
        for line in _exposition(our_registry)
        if line.startswith(("gie", "# HELP gie", "# TYPE gie"))
    ]
    assert gie == _exposition(lib_registry)
    assert our_registry.get_sample_value("llmd_count", {"model": "a", "priority": "1"}) == 2
    with pytest.raises(ValueError, match="not among"):
        Histogram("x", "d", ["a"], buckets=BUCKETS, aliases=[("y", "d", ["b"])])
