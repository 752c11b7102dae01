from __future__ import annotations

from kvgate.scheduling.types import CycleState, ScoredEndpoint
from plugins.kit import ctx, endpoint, make, request


def _scored(*scores: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def test_ignores_scores_and_covers_every_candidate() -> None:
    picker = make("random-picker", c=ctx(5))
    picks = {
        picker.pick(CycleState(), request(), _scored(9, 0, 0)).targets[0].name for _ in range(40)
    }
    assert picks == {"e0", "e1", "e2"}


def test_seeded_runs_repeat() -> None:
    def run() -> list[str]:
        picker = make("random-picker", {"maxNumOfEndpoints": 2}, c=ctx(11))
        return [
            ",".join(
                e.name for e in picker.pick(CycleState(), request(), _scored(1, 1, 1, 1)).targets
            )
            for _ in range(10)
        ]

    first = run()
    assert first == run()
    assert all(len(set(p.split(","))) == 2 for p in first)
