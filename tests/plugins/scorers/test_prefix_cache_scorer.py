from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.kvcache.hashing import prefix_block_hashes, prefix_hash_seed
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheState, prefix_input
from kvgate.scheduling.types import CycleState, ProfileRunResult, SchedulingResult
from plugins.kit import FakeClock, ctx, endpoint, make, request, scheduler, score

FIXED = {"autoTune": False, "blockSize": 4}
A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def _send(plugin: object, prompt: str, target: object, prefill: object = None) -> None:
    results = {"decode": ProfileRunResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileRunResult((prefill,))
    req = request(prompt)
    plugin.score(CycleState(), req, [A, B, C])  # type: ignore[attr-defined]
    plugin.pre_request(req, SchedulingResult(results, "decode"), {})  # type: ignore[attr-defined]


def test_cold_index_and_short_prompt_score_zero() -> None:
    plugin = make("prefix-cache-scorer", FIXED)
    assert score(plugin, [A, B], request("abcdefgh")) == {"a": 0.0, "b": 0.0}
    _send(plugin, "abc", A)  # shorter than one block: nothing to remember
    assert score(plugin, [A, B], request("abc")) == {"a": 0.0, "b": 0.0}
    assert len(plugin.index) == 0


def test_served_prefix_scores_matched_fraction() -> None:
    plugin = make("prefix-cache-scorer", FIXED)
    _send(plugin, "aaaabbbbccccdddd", A)  # 4 blocks on a
    _send(plugin, "aaaabbbbxxxx", B)  # 3 blocks on b, 2 shared with a
    got = score(plugin, [A, B, C], request("aaaabbbbccccdddd"))
    assert got == {"a": 1.0, "b": 0.5, "c": 0.0}
    got = score(plugin, [A, B, C], request("aaaabbbbccccz"))  # trailing partial block ignored
    assert got == {"a": 1.0, "b": 2 / 3, "c": 0.0}


def test_only_the_consecutive_prefix_counts() -> None:
    # llm-d's walk would credit b with blocks 1 and 3 (a keeps the walk going past block 2);
    # b cannot reuse block 3 after missing block 2, so kvgate scores 1/3.
    plugin = make("prefix-cache-scorer", FIXED)
    req = request("aaaabbbbcccc")
    state = CycleState()
    score(plugin, [A, B], req, state)
    hashes = state.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).hashes  # type: ignore[union-attr]
    plugin.index.add("a", hashes)
    plugin.index.add("b", [hashes[0], hashes[2]])
    assert score(plugin, [A, B], req) == {"a": 1.0, "b": pytest.approx(1 / 3)}


def test_hashes_come_from_the_hashing_module_and_state_is_written() -> None:
    plugin = make("prefix-cache-scorer", FIXED, name="pfx")
    req = request("0123456789abcdefXY", model="qwen")
    state = CycleState()
    score(plugin, [A], req, state)
    found = state.read("pfx/prefix-cache-scorer", PrefixCacheState)
    assert found is not None
    assert list(found.hashes) == prefix_block_hashes(
        b"0123456789abcdefXY", 4, prefix_hash_seed("qwen"), 256
    )
    assert found.block_bytes == 4 and found.input_len == 18 and found.matches == {}


def test_max_prefix_blocks_truncates() -> None:
    plugin = make("prefix-cache-scorer", {**FIXED, "maxPrefixBlocksToMatch": 2})
    state = CycleState()
    score(plugin, [A], request("a" * 40), state)
    assert len(state.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).hashes) == 2  # type: ignore[union-attr]


def test_auto_tune_uses_four_chars_per_token_of_the_first_candidate() -> None:
    plugin = make("prefix-cache-scorer")  # autoTune on, blockSize 64
    tuned = endpoint("t", cache_block_size=8)  # 32-byte blocks
    state = CycleState()
    score(plugin, [tuned, A], request("x" * 100), state)
    found = state.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState)
    assert found is not None and found.block_bytes == 32 and len(found.hashes) == 3
    state = CycleState()
    score(plugin, [A, tuned], request("x" * 100), state)  # first candidate unknown → blockSize
    assert state.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).block_bytes == 64  # type: ignore[union-attr]


def test_hash_block_size_is_the_older_name() -> None:
    plugin = make("prefix-cache-scorer", {"autoTune": False, "hashBlockSize": 8})
    assert plugin.block_size == 8
    assert make("prefix-cache-scorer", {"hashBlockSize": 8, "blockSize": 16}).block_size == 16


def test_chat_input_is_compact_json_with_go_escapes() -> None:
    req = request(messages=[{"role": "user", "content": "a<b & c>d é"}])
    assert (
        prefix_input(req) == '[{"role":"user","content":"a\\u003cb \\u0026 c\\u003ed é"}]'.encode()
    )


def test_chat_input_accepts_any_mapping() -> None:
    from types import MappingProxyType

    plain = request(messages=[{"role": "user", "content": "hi"}])
    proxied = request(messages=[MappingProxyType({"role": "user", "content": "hi"})])
    assert prefix_input(proxied) == prefix_input(plain) == b'[{"role":"user","content":"hi"}]'


def test_chat_requests_hit_after_being_served() -> None:
    plugin = make("prefix-cache-scorer", FIXED)
    msgs = [
        {"role": "system", "content": "You are helpful." * 4},
        {"role": "user", "content": "hi"},
    ]
    req = request(messages=msgs)
    plugin.score(CycleState(), req, [A, B])
    plugin.pre_request(req, SchedulingResult({"default": ProfileRunResult((B,))}, "default"), {})
    longer = request(messages=[*msgs, {"role": "assistant", "content": "hello there"}])
    got = score(plugin, [A, B], longer)
    assert got["a"] == 0.0 and 0.5 < got["b"] < 1.0


def test_lru_eviction_per_endpoint_and_hits_refresh() -> None:
    plugin = make("prefix-cache-scorer", {**FIXED, "lruCapacityPerServer": 4})
    _send(plugin, "aaaabbbb", A)  # 2 blocks
    _send(plugin, "ccccdddd", A)  # 4 blocks: full
    _send(plugin, "aaaabbbb", A)  # hit: aaaa/bbbb become most recent
    _send(plugin, "eeee", A)  # evicts the least recent: dddd, the tail of its chain
    assert plugin.index.num_blocks("a") == 4
    assert score(plugin, [A], request("aaaabbbb")) == {"a": 1.0}
    assert score(plugin, [A], request("ccccdddd")) == {"a": 0.5}  # the head outlives its tail
    _send(plugin, "ffffgggghhhhiiiijjjj", B)  # longer than capacity: keeps the first 4 blocks
    assert plugin.index.num_blocks("b") == 4
    assert score(plugin, [B], request("ffffgggghhhhiiii")) == {"b": 1.0}


def test_auto_tune_lru_capacity_from_num_gpu_blocks() -> None:
    plugin = make("prefix-cache-scorer", {"blockSize": 4, "lruCapacityPerServer": 100})
    small = endpoint("s", cache_num_gpu_blocks=3)
    req = request("aaaabbbbccccdddd")
    plugin.score(CycleState(), req, [small])
    plugin.pre_request(
        req, SchedulingResult({"default": ProfileRunResult((small,))}, "default"), {}
    )
    assert plugin.index.num_blocks("s") == 3


def test_prefill_target_is_indexed_too() -> None:
    plugin = make("prefix-cache-scorer", FIXED)
    _send(plugin, "aaaabbbb", A, prefill=B)
    assert score(plugin, [A, B, C], request("aaaabbbb")) == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_purge_on_removal_through_the_scheduler() -> None:
    c = ctx()
    plugin = make("prefix-cache-scorer", FIXED, c=c)
    sched = scheduler([(plugin, 1.0)], c=c)
    req = request("aaaabbbb")
    result = sched.schedule(req, [A, B])
    sched.pre_request(req, result)
    assert plugin.index.endpoints() == [result.target.name]
    sched.endpoints_removed([result.target.name])
    assert plugin.index.endpoints() == []


def test_endpoints_unseen_for_two_minutes_are_dropped() -> None:
    clock = FakeClock()
    plugin = make("prefix-cache-scorer", FIXED, c=ctx(clock=clock))
    _send(plugin, "aaaabbbb", A)
    _send(plugin, "aaaabbbb", B)
    clock.advance(100)
    score(plugin, [A], request("zzzz"))  # only a is still a candidate
    clock.advance(30)
    assert score(plugin, [A, B], request("aaaabbbb")) == {"a": 1.0, "b": 0.0}
    assert plugin.index.endpoints() == ["a"]


def test_hash_chain_is_memoised_and_lazy() -> None:
    plugin = make("prefix-cache-scorer", FIXED)
    req = request("aaaabbbbccccdddd")
    first, second = CycleState(), CycleState()
    score(plugin, [A, B], req, first)
    assert (
        first.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).chain.num_hashed
        == 0
    )  # type: ignore[union-attr]
    _send(plugin, "zzzz", A)
    req = request("aaaabbbbccccdddd")
    score(plugin, [A, B], req, first)
    chain = first.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).chain  # type: ignore[union-attr]
    assert chain.num_blocks == 4
    assert chain.num_hashed == 1  # a holds another block 0: one hash was enough to know
    score(plugin, [A, B], req, second)
    assert second.read("prefix-cache-scorer/prefix-cache-scorer", PrefixCacheState).chain is chain  # type: ignore[union-attr]
    assert len(chain.all()) == 4


def test_growing_windows_find_long_and_short_matches() -> None:
    plugin = make("prefix-cache-scorer", {**FIXED, "blockSize": 1})
    prompt = "".join(chr(33 + i % 90) for i in range(200))
    full = plugin.hashes(request(prompt), 1)
    for k in (1, 2, 8, 9, 17, 100, 199, 200):
        plugin.index.add(f"e{k}", full[:k])
    names = [f"e{k}" for k in (1, 2, 8, 9, 17, 100, 199, 200)]
    got = score(plugin, [endpoint(n) for n in names], request(prompt))
    assert got == {f"e{k}": k / 200 for k in (1, 2, 8, 9, 17, 100, 199, 200)}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"blockSize": 0}, "blockSize"),
        ({"hashBlockSize": "64"}, "hashBlockSize"),
        ({"autoTune": 1}, "autoTune"),
        ({"maxPrefixBlocksToMatch": -1}, "maxPrefixBlocksToMatch"),
        ({"lruCapacityPerServer": 1.5}, "lruCapacityPerServer"),
        ({"blocksize": 64}, "blocksize"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("prefix-cache-scorer", params)
    assert err.value.field == field


def test_consumer_mode_scores_the_named_producers_matches() -> None:
    from kvgate.scheduling import data as produced
    from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo

    s = make("prefix-cache-scorer", {"prefixMatchInfoProducerName": "gpu"})
    key = DataKey(produced.PREFIX_CACHE_MATCH_INFO, "gpu")
    assert s.consumes() == (key,)
    req = request()
    produced.put(req, key, {"a": PrefixCacheMatchInfo(3, 4, 64, 3)})
    a, b = endpoint("a"), endpoint("b")
    assert score(s, [a, b], req) == {"a": 0.75, "b": 0.0}
    # llm-d's blend: 0.5 · min(1, 3·64/384)² + 0.5 · 3/4
    blended = make(
        "prefix-cache-scorer",
        {"prefixMatchInfoProducerName": "gpu", "matchLengthWeight": 0.5,
         "matchLengthScaleTokens": 384},
    )  # fmt: skip
    assert score(blended, [a], req)["a"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.75)


def test_standalone_scorer_reads_the_default_producer_when_it_ran() -> None:
    from kvgate.scheduling import data as produced
    from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo

    s = make("prefix-cache-scorer")
    assert s.consumes() == ()
    req = request()
    produced.put(req, DataKey(produced.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
                 {"a": PrefixCacheMatchInfo(1, 2, 64, 1)})  # fmt: skip
    assert score(s, [endpoint("a")], req) == {"a": 0.5}


def test_index_parameters_conflict_with_a_producer() -> None:
    with pytest.raises(PluginParameterError) as err:
        make("prefix-cache-scorer", {"prefixMatchInfoProducerName": "p", "blockSize": 8})
    assert err.value.field == "blockSize"
    assert make("prefix-cache-scorer", {"blockSizeTokens": 16}).block_size == 64


def test_the_approximate_index_size_is_exported_at_scrape_time() -> None:
    from prometheus_client import CollectorRegistry

    from kvgate.kvcache.metrics import register_metrics
    from kvgate.plugins.scorers.prefix_cache_scorer import ApproxPrefixIndex

    registry = CollectorRegistry()
    register_metrics(registry)
    before = registry.get_sample_value("kvgate_prefix_index_blocks") or 0.0
    index = ApproxPrefixIndex(default_capacity=100)
    index.add("a", [1, 2, 3])
    index.add("b", [1, 2])
    assert registry.get_sample_value("kvgate_prefix_index_blocks") == before + 5


def test_v0_1_mode_estimate_is_this_scorer_and_cache_tracking_is_refused() -> None:
    assert make("prefix-cache-scorer", {"mode": "estimate"}).type_name == "prefix-cache-scorer"
    with pytest.raises(PluginParameterError, match="cache_tracking' is not supported") as err:
        make("prefix-cache-scorer", {"mode": "cache_tracking"})
    assert err.value.field == "mode"
