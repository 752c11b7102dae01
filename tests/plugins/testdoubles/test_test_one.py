"""test-one: llm-d's config-loader double keeps every endpoint; threshold must be an integer."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import CycleState
from plugins.kit import endpoint, make, request


def test_keeps_every_endpoint_and_checks_threshold() -> None:
    f = make("test-one", {"threshold": 10})
    eps = [endpoint("a"), endpoint("b")]
    assert f.filter(CycleState(), request(), eps) == eps
    with pytest.raises(PluginParameterError):
        make("test-one", {"threshold": "ten"})
