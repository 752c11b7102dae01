from __future__ import annotations

import pytest

from kvgate.errors import SchedulingFailedError
from kvgate.scheduling.scheduler import Scheduler, SchedulerProfile
from kvgate.scheduling.types import CycleState, ProfileRunResult
from plugins.kit import ctx, endpoint, make, request, scheduler


def test_runs_all_profiles_once_then_stops() -> None:
    handler = make("single-profile-handler")
    profiles = {"default": object()}
    assert handler.pick_profiles(CycleState(), request(), profiles, {}) == profiles
    done = {"default": ProfileRunResult((endpoint("a"),))}
    assert handler.pick_profiles(CycleState(), request(), profiles, done) == {}


def test_the_one_result_is_primary() -> None:
    c = ctx()
    sched = scheduler([(make("queue-scorer", c=c), 1.0)], c=c)
    result = sched.schedule(request(), [endpoint("a", waiting_queue_size=3), endpoint("b")])
    assert result.primary_profile_name == "default"
    assert result.target.name == "b"


def test_failed_profile_is_a_scheduling_failure() -> None:
    c = ctx()
    sched = scheduler([], filters=[make("prefill-filter", c=c)], c=c)
    with pytest.raises(SchedulingFailedError, match="'default'"):
        sched.schedule(request(), [endpoint("a")])


def test_more_than_one_profile_is_rejected() -> None:
    c = ctx()
    picker = make("max-score-picker", c=c)
    handler = make("single-profile-handler", c=c)
    profiles = {n: SchedulerProfile(n, (), (), picker) for n in ("a", "b")}
    with pytest.raises(SchedulingFailedError, match="exactly one"):
        Scheduler(profiles, handler, [picker, handler]).schedule(request(), [endpoint("x")])
