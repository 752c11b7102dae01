from __future__ import annotations

from kvgate.scheduling.types import CycleState, ScoredEndpoint
from plugins.kit import endpoint, make, request


def test_cycles_in_name_order_whatever_the_scores() -> None:
    picker = make("round-robin-picker")
    scored = [ScoredEndpoint(endpoint(n), s) for n, s in (("c", 5.0), ("a", 0.0), ("b", 1.0))]
    picks = [picker.pick(CycleState(), request(), scored).targets[0].name for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_k_targets_follow_the_cursor() -> None:
    picker = make("round-robin-picker", {"maxNumOfEndpoints": 2})
    scored = [ScoredEndpoint(endpoint(n), 0.0) for n in ("a", "b", "c")]
    picks = [
        [e.name for e in picker.pick(CycleState(), request(), scored).targets] for _ in range(3)
    ]
    assert picks == [["a", "b"], ["b", "c"], ["c", "a"]]
