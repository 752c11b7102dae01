from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import CycleState, ProfileRunResult, SchedulingResult
from plugins.kit import ctx, endpoint, make, request, scheduler, score

A, B, C = endpoint("a"), endpoint("b"), endpoint("c")
FIXED = {"autoTune": False, "blockSize": 4}


def _served(plugin: object, target: object, cold: bool = True) -> None:
    req = request()
    req.extra[f"kvgate.no-hit-lru.cold/{plugin.name}"] = cold  # type: ignore[attr-defined]
    plugin.pre_request(
        req, SchedulingResult({"default": ProfileRunResult((target,))}, "default"), {}
    )  # type: ignore[attr-defined]


def test_cold_scores_never_used_first_then_least_recent() -> None:
    plugin = make("no-hit-lru-scorer")
    assert score(plugin, [A, B, C]) == {"a": 1.0, "b": 0.5, "c": 0.0}
    _served(plugin, B)
    assert score(plugin, [A, B, C]) == {"a": 1.0, "c": 0.5, "b": 0.0}
    _served(plugin, A)
    _served(plugin, C)
    # all used: LRU order b (oldest), a, c
    assert score(plugin, [A, B, C]) == {"b": 1.0, "a": 0.5, "c": 0.0}


def test_lru_position_counts_endpoints_that_are_not_candidates() -> None:
    """llm-d-router ranks a used candidate by its position in the whole LRU."""
    plugin = make("no-hit-lru-scorer")
    _served(plugin, C)  # LRU: c (oldest), a, b; c is filtered out below
    _served(plugin, A)
    _served(plugin, B)
    assert score(plugin, [A, B]) == {"a": 0.0, "b": 0.0}  # ranks 1 and 2 of N - 1 = 1
    assert score(plugin, [A, B, C]) == {"c": 1.0, "a": 0.5, "b": 0.0}


def test_single_candidate_scores_one() -> None:
    assert score(make("no-hit-lru-scorer"), [A]) == {"a": 1.0}


def test_warm_requests_score_half_and_do_not_touch_the_lru() -> None:
    c = ctx()
    prefix = make("prefix-cache-scorer", FIXED, c=c, name="pfx")
    plugin = make("no-hit-lru-scorer", {"prefixPluginName": "pfx"}, c=c)
    sched = scheduler([(prefix, 1.0), (plugin, 1.0)], c=c)
    req = request("aaaabbbb")
    sched.pre_request(req, sched.schedule(req, [A, B, C]))  # cold: goes to the LRU
    assert len(plugin.lru()) == 1
    state = CycleState()
    warm = request("aaaabbbb")
    prefix.score(state, warm, [A, B, C])
    assert plugin.score(state, warm, [A, B, C]) == {"a": 0.5, "b": 0.5, "c": 0.5}
    sched.pre_request(warm, sched.schedule(warm, [A, B, C]))
    assert len(plugin.lru()) == 1


def test_reads_the_prefix_state_under_name_slash_type() -> None:
    # llm-d v0.4 read "prefix-cache-scorer" and saw every request as cold; kvgate reads
    # "<prefixPluginName>/<type>" so a cache hit makes the request warm.
    c = ctx()
    prefix = make("prefix-cache-scorer", FIXED, c=c)
    plugin = make("no-hit-lru-scorer", c=c)
    prefix.index.add("b", prefix.hashes(request("aaaabbbb"), 4))
    state = CycleState()
    prefix.score(state, request("aaaabbbb"), [A, B])
    assert state.keys() == ["prefix-cache-scorer/prefix-cache-scorer"]
    assert not plugin.is_cold(state)
    assert make("no-hit-lru-scorer", {"prefixPluginName": "other"}, c=c).is_cold(state)


def test_cold_requests_spread_over_endpoints_through_the_scheduler() -> None:
    c = ctx()
    prefix = make("prefix-cache-scorer", FIXED, c=c)
    plugin = make("no-hit-lru-scorer", c=c)
    sched = scheduler([(prefix, 3.0), (plugin, 2.0)], c=c)
    picks = []
    for i in range(6):
        req = request(f"{i}" * 8, request_id=f"r{i}")
        result = sched.schedule(req, [A, B, C])
        sched.pre_request(req, result)
        picks.append(result.target.name)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_lru_size_and_removal() -> None:
    plugin = make("no-hit-lru-scorer", {"lruSize": 2})
    for e in (A, B, C):
        _served(plugin, e)
    assert plugin.lru() == ["b", "c"]
    plugin.endpoints_removed(["c"])
    assert plugin.lru() == ["b"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"lruSize": 0}, "lruSize"), ({"prefixPluginName": 3}, "prefixPluginName")],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("no-hit-lru-scorer", params)
    assert err.value.field == field


def test_coldness_from_a_named_producer() -> None:
    from kvgate.scheduling import data
    from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo

    plugin = make("no-hit-lru-scorer", {"prefixMatchInfoProducerName": "approx"})
    key = DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx")
    assert plugin.consumes() == (key,)
    warm = request()
    data.put(
        warm, key, {"a": PrefixCacheMatchInfo(2, 4, 64, 2), "b": PrefixCacheMatchInfo(0, 4, 64, 0)}
    )
    assert score(plugin, [A, B], warm) == {"a": 0.5, "b": 0.5}
    cold = request()
    data.put(cold, key, {"a": PrefixCacheMatchInfo(0, 4, 64, 0)})
    assert score(plugin, [A, B], cold) == {"a": 1.0, "b": 0.0}


def test_without_a_prefix_scorer_it_consumes_the_default_producer() -> None:
    """llm-d-router's scorer requires PrefixCacheMatchInfo from approx-prefix-cache-producer
    when it names no producer; with no prefix-cache-scorer to read, kvgate does the same
    (and the config builder adds that producer, as llm-d)."""
    from kvgate.config import build_scheduler, load_picker_config
    from kvgate.scheduling import data
    from kvgate.scheduling.data import DataKey

    default = DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer")
    assert make("no-hit-lru-scorer").consumes() == (default,)
    c = ctx()
    make("prefix-cache-scorer", c=c)
    assert make("no-hit-lru-scorer", c=c).consumes() == ()
    text = "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\nplugins: [{type: no-hit-lru-scorer}]\n"
    sched = build_scheduler(load_picker_config(text=text, env={}))
    assert [p.name for p in sched.producers] == ["approx-prefix-cache-producer"]
