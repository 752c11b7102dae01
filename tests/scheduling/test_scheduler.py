"""The invariants the framework enforces once for every plugin: clamped scores, weighted sums,
missing endpoints counting 0, every survivor handed to the picker in order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kvgate.scheduling.types import CycleState, Endpoint, Request
from plugins.kit import endpoint, make, request, scheduler


class FixedScorer:
    """A third-party scorer that returns whatever it was given, out of range included."""

    type_name = "fixed-scorer"

    def __init__(self, name: str, scores: Mapping[str, float]) -> None:
        self.name = name
        self.scores = scores

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return dict(self.scores)


EPS = [endpoint(n) for n in ("a", "b", "c", "d", "e")]


def test_scores_are_clamped_weighted_and_missing_endpoints_count_zero() -> None:
    wild = FixedScorer("wild", {"a": math.nan, "b": -3.0, "c": 7.5, "d": 0.25, "x": 1.0})
    half = FixedScorer("half", {n.name: 0.5 for n in EPS})
    sched = scheduler([(wild, 3.0), (half, 2.0)])
    scored = sched.schedule(request(), EPS).primary.scored
    assert [s.endpoint for s in scored] == EPS  # every survivor, in candidate order
    got = {s.endpoint.name: (s.score, dict(s.scores)) for s in scored}
    assert got == {
        "a": (1.0, {"wild": 0.0, "half": 0.5}),  # NaN counts 0
        "b": (1.0, {"wild": 0.0, "half": 0.5}),  # negative → 0
        "c": (4.0, {"wild": 1.0, "half": 0.5}),  # above 1 → 1
        "d": (1.75, {"wild": 0.25, "half": 0.5}),
        "e": (1.0, {"wild": 0.0, "half": 0.5}),  # left out by the scorer → 0
    }
    assert sched.schedule(request(), EPS).target.name == "c"


def test_totals_sum_in_scorer_order_from_zero() -> None:
    # Floating-point sums depend on order; the framework adds weight · score scorer by scorer.
    values = (0.1, 0.7, 0.2, 0.3)
    weights = (0.3, 1.7, 2.9, 0.01)
    scorers = [
        (FixedScorer(f"s{i}", {"a": v}), w)
        for i, (v, w) in enumerate(zip(values, weights, strict=True))
    ]
    (only,) = scheduler(scorers).schedule(request(), EPS[:1]).primary.scored
    total = 0.0
    for v, w in zip(values, weights, strict=True):
        total += w * v
    assert only.score == total


def test_picker_sees_the_weighted_totals() -> None:
    picker = make("max-score-picker", {"maxNumOfEndpoints": 3})
    ranking = FixedScorer("r", {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.3, "e": 0.0})
    result = scheduler([(ranking, 1.0)], picker=picker).schedule(request(), EPS)
    assert [t.name for t in result.primary.targets] == ["b", "c", "d"]


class CountingProducer:
    """A third-party producer that records each call and may consume another's key."""

    type_name = "counting-producer"

    def __init__(self, name: str, log: list[str], needs: str | None = None) -> None:
        from kvgate.scheduling.data import DataKey

        self.name = name
        self.log = log
        self.key = DataKey("Count", name)
        self.needs = () if needs is None else (DataKey("Count", needs),)

    def produces(self) -> tuple[object, ...]:
        return (self.key,)

    def consumes(self) -> tuple[object, ...]:
        return self.needs

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        from kvgate.scheduling import data

        self.log.append(self.name)
        data.put(request, self.key, len(endpoints))  # type: ignore[arg-type]


def test_producers_run_once_per_request_in_dependency_order_and_are_timed() -> None:
    log: list[str] = []
    late = CountingProducer("late", log, needs="early")
    early = CountingProducer("early", log)
    sched = scheduler([(FixedScorer("s", {}), 1.0)], extra=[late, early])
    seen: list[tuple[str, str]] = []
    sched.observe = lambda point, type_name, name, s: seen.append((point, name))
    assert [p.name for p in sched.producers] == ["early", "late"]
    req = request()
    sched.schedule(req, EPS)
    sched.schedule(req, EPS[:2])  # a retry of the same request reuses the data
    assert log == ["early", "late"]
    assert seen[:2] == [("data_producer", "early"), ("data_producer", "late")]
    assert req.produced == {"Count/early": 5, "Count/late": 5}
    sched.schedule(request(request_id="r2"), EPS)
    assert log == ["early", "late", "early", "late"]


def test_producers_in_a_cycle_are_refused() -> None:
    import pytest

    from kvgate.scheduling.scheduler import order_producers

    log: list[str] = []
    with pytest.raises(ValueError, match="cycle: x, y"):
        order_producers([CountingProducer("x", log, "y"), CountingProducer("y", log, "x")])  # type: ignore[list-item]
