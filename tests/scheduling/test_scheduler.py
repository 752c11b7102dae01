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
