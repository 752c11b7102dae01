"""data-parallel-profile-handler: one profile, port rewrite, the data-parallel header."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import HEADER_DATA_PARALLEL
from plugins.kit import endpoint, make, request, scheduler

TYPE = "data-parallel-profile-handler"


def test_rewrites_the_port_and_names_the_rank() -> None:
    handler = make(TYPE, {"primaryPort": 8000})
    sched = scheduler([])
    sched = type(sched)(sched.profiles, handler, (*sched.plugins, handler))
    rank = endpoint("pod-rank-1")
    req = request()
    result = sched.schedule(req, [rank])
    assert result.target.port == 8000 and result.target.name == rank.name
    assert sched.pre_request(req, result) == {HEADER_DATA_PARALLEL: rank.hostport}


def test_port_zero_leaves_the_target_and_bad_ports_fail() -> None:
    handler = make(TYPE, {"primaryPort": 0})
    sched = scheduler([])
    sched = type(sched)(sched.profiles, handler, (*sched.plugins, handler))
    rank = endpoint("x")
    req = request()
    assert (
        sched.schedule(req, [rank]).target is rank
        and sched.pre_request(req, sched.schedule(req, [rank])) == {}
    )
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"primaryPort": 70000})
    assert err.value.field == "primaryPort"
