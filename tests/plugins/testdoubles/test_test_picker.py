"""test-picker: llm-d's config-loader double picks nothing, so the cycle fails (429)."""

from __future__ import annotations

import pytest

from kvgate.errors import SchedulingFailedError
from plugins.kit import endpoint, make, request, scheduler


def test_picks_nothing() -> None:
    sched = scheduler([(make("queue-scorer"), 1.0)], picker=make("test-picker"))
    with pytest.raises(SchedulingFailedError):
        sched.schedule(request(), [endpoint("a")])
