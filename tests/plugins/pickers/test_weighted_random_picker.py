from __future__ import annotations

from collections import Counter

from kvgate.scheduling.types import CycleState, ScoredEndpoint
from plugins.kit import ctx, endpoint, make, request


def _scored(*scores: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def _counts(scores: tuple[float, ...], n: int = 2000, k: int = 1) -> Counter[str]:
    picker = make("weighted-random-picker", {"maxNumOfEndpoints": k}, c=ctx(3))
    out: Counter[str] = Counter()
    for _ in range(n):
        for e in picker.pick(CycleState(), request(), _scored(*scores)).targets:
            out[e.name] += 1
    return out


def test_frequency_follows_score() -> None:
    counts = _counts((3.0, 1.0, 0.0))
    assert counts["e2"] == 0  # score 0 gets key 0 and never beats a positive key
    assert 0.70 < counts["e0"] / 2000 < 0.80  # expected 3/4


def test_all_zero_is_uniform() -> None:
    counts = _counts((0.0, 0.0, 0.0), n=900)
    assert set(counts) == {"e0", "e1", "e2"}
    assert min(counts.values()) > 200


def test_top_k_distinct() -> None:
    picker = make("weighted-random-picker", {"maxNumOfEndpoints": 3}, c=ctx(1))
    targets = picker.pick(CycleState(), request(), _scored(1, 2, 3, 0)).targets
    assert len({e.name for e in targets}) == 3
    assert "e3" not in {e.name for e in targets}


def test_deterministic_under_seed() -> None:
    assert _counts((1.0, 2.0), n=50) == _counts((1.0, 2.0), n=50)
