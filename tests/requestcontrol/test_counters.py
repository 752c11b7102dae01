"""kvgate.requestcontrol.counters against prometheus_client's Counter and Gauge: the same calls
give the same exposition text (``_created`` values aside), hostile values included, and an
alias exports the same counts under another name, summed over the labels it leaves out."""

from __future__ import annotations

import math
import re

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from kvgate.requestcontrol.counters import Counter, Gauge

_CREATED = re.compile(rb"^\S+_created(\{[^}]*\})? \S+\n", re.M)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-(10**6), 10**6).map(float),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan]),
)
label = st.sampled_from(["a", "b", "", "x\ny", 'q"uote', "ü"])


def text(registry: CollectorRegistry) -> bytes:
    return _CREATED.sub(b"", generate_latest(registry))


@given(ops=st.lists(st.tuples(label, label, st.sampled_from(["inc", "dec", "set"]), values)))
def test_same_exposition_as_prometheus_client(ops: list[tuple[str, str, str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    oc = Counter("c_total", "a counter", ["x", "y"], registry=ours)
    tc = prometheus_client.Counter("c_total", "a counter", ["x", "y"], registry=theirs)
    og = Gauge("g", "a gauge", ["x", "y"], registry=ours)
    tg = prometheus_client.Gauge("g", "a gauge", ["x", "y"], registry=theirs)
    for x, y, op, value in ops:
        if op == "inc":
            for counter in (oc, tc):
                try:
                    counter.labels(x, y).inc(value)
                    ok = True
                except ValueError:
                    ok = False
                assert ok == (not value < 0)
        getattr(og.labels(x, y), op)(value)
        getattr(tg.labels(x, y), op)(value)
    assert text(ours) == text(theirs)


def test_unlabelled_and_created() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    Counter("u", "plain", registry=ours).inc(2)
    prometheus_client.Counter("u", "plain", registry=theirs).inc(2)
    gauge = Gauge("v", "plain", registry=ours)
    gauge.set(3)
    gauge.dec()
    reference = prometheus_client.Gauge("v", "plain", registry=theirs)
    reference.set(3)
    reference.dec()
    assert text(ours) == text(theirs)
    assert re.search(rb"^u_created \d", generate_latest(ours), re.M)
    with pytest.raises(ValueError):
        Counter("w", "labelled", ["a"], registry=ours).inc()
    with pytest.raises(ValueError):
        Counter("z", "labelled", ["a"], registry=ours).labels("1", "2")


def test_alias_sums_over_the_labels_it_drops() -> None:
    registry = CollectorRegistry()
    counter = Counter(
        "new_total", "new", ["model", "fairness"], registry=registry,
        aliases=[("old_total", "old", ["model"])],
    )  # fmt: skip
    counter.labels("m", "f1").inc(2)
    counter.labels("m", "f2").inc(3)
    counter.labels("n", "f1").inc()
    assert registry.get_sample_value("old_total", {"model": "m"}) == 5
    assert registry.get_sample_value("old_total", {"model": "n"}) == 1
    assert registry.get_sample_value("new_total", {"model": "m", "fairness": "f2"}) == 3
    gauge = Gauge(
        "run", "r", ["model", "p"], registry=registry, aliases=[("run_old", "o", ["model"])]
    )
    gauge.labels("m", "1").inc()
    gauge.labels("m", "2").inc()
    gauge.labels("m", "2").dec()
    assert registry.get_sample_value("run_old", {"model": "m"}) == 1
    with pytest.raises(ValueError):
        Counter("bad", "b", ["a"], aliases=[("bad_old", "o", ["nope"])])
