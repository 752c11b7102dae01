from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import CycleState, ScoredEndpoint
from plugins.kit import ctx, endpoint, make, request


def _scored(*scores: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def _pick(picker: object, scored: list[ScoredEndpoint]) -> list[str]:
    result = picker.pick(CycleState(), request(), scored)  # type: ignore[attr-defined]
    return [e.name for e in result.targets]


def test_highest_score_wins() -> None:
    assert _pick(make("max-score-picker"), _scored(0.1, 2.5, 1.0)) == ["e1"]


def test_top_k_in_descending_order() -> None:
    picker = make("max-score-picker", {"maxNumOfEndpoints": 2})
    assert _pick(picker, _scored(0.1, 2.5, 1.0)) == ["e1", "e2"]


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k_means_one(k: int) -> None:
    assert _pick(make("max-score-picker", {"maxNumOfEndpoints": k}), _scored(1, 2, 3)) == ["e2"]


def test_ties_broken_randomly_and_deterministically_under_seed() -> None:
    scored = _scored(1.0, 1.0, 1.0, 0.5)
    runs = []
    for seed in (3, 3):
        picker = make("max-score-picker", c=ctx(seed))
        runs.append([_pick(picker, scored)[0] for _ in range(30)])
    assert runs[0] == runs[1]  # same seed, same picks
    assert set(runs[0]) == {"e0", "e1", "e2"}  # every tied endpoint is chosen sometimes, never e3


def test_ties_with_k_shuffled_but_never_below_better() -> None:
    picker = make("max-score-picker", {"maxNumOfEndpoints": 3}, c=ctx(1))
    seen = set()
    for _ in range(30):
        picks = _pick(picker, _scored(0.2, 1.0, 1.0, 1.0))
        assert "e0" not in picks
        seen.add(tuple(picks))
    assert len(seen) > 1


def test_empty_input_gives_no_target() -> None:
    assert _pick(make("max-score-picker"), []) == []


def test_bad_parameter_names_the_field() -> None:
    with pytest.raises(PluginParameterError) as err:
        make("max-score-picker", {"maxNumOfEndpoints": "two"})
    assert err.value.field == "maxNumOfEndpoints"
    with pytest.raises(PluginParameterError) as err:
        make("max-score-picker", {"maxEndpoints": 2})
    assert err.value.field == "maxEndpoints"
