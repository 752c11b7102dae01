from __future__ import annotations

from typing import Any

import pytest

from kvgate.errors import PluginParameterError, SchedulingFailedError
from kvgate.scheduling.scheduler import Scheduler, SchedulerProfile, WeightedScorer
from kvgate.scheduling.types import HEADER_DATA_PARALLEL, HEADER_PREFILLER, ROLE_LABEL
from plugins.kit import ctx, endpoint, make, request

DECODE = endpoint("dec", {ROLE_LABEL: "decode"})
PREFILL = endpoint("pre", {ROLE_LABEL: "prefill"})
FIXED = {"autoTune": False, "blockSize": 64}


def _scheduler(handler_params: dict[str, Any] | None = None, *, c: Any = None) -> Scheduler:
    c = c or ctx()
    prefix = make("prefix-cache-scorer", FIXED, c=c)
    picker = make("max-score-picker", c=c)
    handler = make("pd-profile-handler", handler_params, c=c)
    header = make("prefill-header-handler", c=c)
    profiles = {
        "decode": SchedulerProfile(
            "decode", (make("decode-filter", c=c),), (WeightedScorer(prefix, 1.0),), picker
        ),
        "prefill": SchedulerProfile(
            "prefill", (make("prefill-filter", c=c),), (WeightedScorer(prefix, 1.0),), picker
        ),
    }
    return Scheduler(profiles, handler, [prefix, picker, handler, header])


def _route(
    sched: Scheduler, prompt: str, eps: list[Any] | None = None
) -> tuple[list[str], dict[str, str]]:
    req = request(prompt)
    result = sched.schedule(req, eps or [DECODE, PREFILL])
    headers = sched.pre_request(req, result)
    assert result.primary_profile_name == "decode"
    return sorted(result.profile_results), headers


def test_threshold_zero_always_disaggregates() -> None:
    profiles, headers = _route(_scheduler(), "short")
    assert profiles == ["decode", "prefill"]
    assert headers == {HEADER_PREFILLER: PREFILL.hostport}


def test_short_input_stays_on_decode() -> None:
    profiles, headers = _route(_scheduler({"threshold": 100}), "x" * 99)
    assert profiles == ["decode"]
    assert HEADER_PREFILLER not in headers


def test_long_uncached_input_is_prefilled_then_cached_input_is_not() -> None:
    sched = _scheduler({"threshold": 100})
    prompt = "".join(chr(65 + i) * 64 for i in range(10))  # 10 blocks of 64
    assert _route(sched, prompt)[0] == ["decode", "prefill"]
    # decode now holds all 10 blocks: hit = 9 → uncached = 640 − 9·64 = 64 < 100
    assert _route(sched, prompt)[0] == ["decode"]
    # a prompt sharing only 2 blocks: hit = 1 → uncached = 704 − 64 ≥ 100
    assert _route(sched, prompt[:128] + "z" * 576)[0] == ["decode", "prefill"]


def test_a_named_decider_decides_instead_of_the_threshold() -> None:
    c = ctx()
    always = make("always-disagg-pd-decider", c=c)
    make("prefix-based-pd-decider", {"nonCachedTokens": 0}, c=c, name="never")
    sched = _scheduler({"deciderPluginName": always.name}, c=c)
    assert _route(sched, "short")[0] == ["decode", "prefill"]
    assert _route(_scheduler({"deciderPluginName": "never"}, c=c), "x" * 999)[0] == ["decode"]
    handler = make("pd-profile-handler", {"deciderPluginName": "gone"}, c=c)
    with pytest.raises(PluginParameterError, match="'gone' is not configured"):
        handler.check_references(c.plugins)
    with pytest.raises(PluginParameterError, match="not both"):
        make("pd-profile-handler", {"deciderPluginName": always.name, "threshold": 5})


def test_decode_failure_fails_scheduling() -> None:
    with pytest.raises(SchedulingFailedError, match="'decode'"):
        _scheduler().schedule(request(), [PREFILL])


def test_prefill_failure_keeps_decode_only() -> None:
    plain = endpoint("plain")  # unlabeled: decodes, never prefills
    profiles, headers = _route(_scheduler(), "hello", [plain])
    assert profiles == ["decode"]
    assert headers == {}


def test_primary_port_rewrites_the_target_and_sets_the_data_parallel_header() -> None:
    sched = _scheduler({"primaryPort": 9000})
    req = request("hello")
    result = sched.schedule(req, [DECODE, PREFILL])
    assert result.target.port == 9000 and result.target.name == "dec"
    headers = sched.pre_request(req, result)
    assert headers[HEADER_DATA_PARALLEL] == DECODE.hostport
    assert DECODE.port != 9000  # the pool's endpoint object is not mutated


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"threshold": -1}, "threshold"),
        ({"decodeProfile": 1}, "decodeProfile"),
        ({"hashBlockSize": 0}, "hashBlockSize"),
        ({"primaryPort": "x"}, "primaryPort"),
        ({"prefill": "p"}, "prefill"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("pd-profile-handler", params)
    assert err.value.field == field
