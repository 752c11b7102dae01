"""approx-prefix-cache-producer: llm-d's parameters, per-endpoint matches, learning in PreRequest."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Producer
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, ProfileRunResult, SchedulingResult
from plugins.kit import endpoint, make, request

TYPE = "approx-prefix-cache-producer"
KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, TYPE)
A, B = endpoint("a"), endpoint("b")
PROMPT = "x" * (256 * 5 + 10)  # 5 full blocks of 64 tokens (256 bytes)


def _produce(plugin: object, prompt: str, eps: list[object]) -> dict[str, PrefixCacheMatchInfo]:
    req = request(prompt)
    plugin.produce(CycleState(), req, eps)  # type: ignore[attr-defined]
    found = data.per_endpoint(req, KEY, PrefixCacheMatchInfo)
    assert found is not None
    plugin.pre_request(  # type: ignore[attr-defined]
        req, SchedulingResult({"default": ProfileRunResult((eps[0],))}, "default"), {}
    )
    return dict(found)


def test_defaults_follow_llm_d() -> None:
    p = make(TYPE)
    assert isinstance(p, Producer) and p.produces() == (KEY,)
    assert (p.auto_tune, p.block_size_tokens, p.max_prefix_blocks, p.max_prefix_tokens) == (
        True,
        16,
        2048,
        131072,
    )
    # 16 is raised to llm-d's minimum of 64 tokens; maxPrefixTokensToMatch wins over blocks
    assert p.block_tokens([A]) == 64 and p.max_blocks(64) == 2048
    assert (
        make(TYPE, {"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 3}).max_blocks(64) == 3
    )
    assert make(TYPE, {"blockSizeTokens": 128, "autoTune": False}).block_tokens([A]) == 128
    assert make(TYPE, {"blockSize": 100}).block_size_tokens == 100  # deprecated name
    assert p.block_tokens([endpoint("c", cache_block_size=256)]) == 256  # auto-tuned


def test_matches_are_published_for_every_candidate_and_learnt_in_pre_request() -> None:
    p = make(TYPE)
    first = _produce(p, PROMPT, [A, B])
    assert first == {
        "a": PrefixCacheMatchInfo(0, 5, 64, 0),
        "b": PrefixCacheMatchInfo(0, 5, 64, 0),
    }
    again = _produce(p, PROMPT[: 256 * 3] + "y" * 600, [B, A])  # shares 3 blocks with A's
    assert again["a"] == PrefixCacheMatchInfo(3, 5, 64, 3) and again["b"].match_blocks == 0


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"lruCapacityPerServer": 0})
    assert err.value.field == "lruCapacityPerServer"
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"hashBlockSize": 4})
    assert err.value.field == "hashBlockSize"
