"""test-two: llm-d's config-loader double scores every endpoint 0."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from plugins.kit import endpoint, make, request, scheduler


def test_scores_nothing_so_the_other_scorer_decides() -> None:
    zero = make("test-two", {"blockSize": 32})
    queue = make("queue-scorer")
    eps = [endpoint("busy", waiting_queue_size=9), endpoint("idle")]
    result = scheduler([(zero, 50.0), (queue, 1.0)]).schedule(request(), eps)
    assert result.primary.targets[0].name == "idle"
    assert {s.scores["test-two"] for s in result.primary.scored} == {0.0}
    with pytest.raises(PluginParameterError):
        make("test-two", {"blockSize": 1.5})
