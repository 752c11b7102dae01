"""Thresholds of ``prefix-based-pd-decider`` through a built scheduler (estimate tokens: 4 bytes
each; 64-token blocks, i.e. 256 bytes)."""

from __future__ import annotations

import pytest

from kvgate.errors import ConfigError
from plugins.kit import request
from plugins.profiles.pd_kit import DECODE, PREFILL, pd_config, pd_scheduler

HANDLER = (
    "- type: disagg-profile-handler\n  parameters: {deciders: {prefill: prefix-based-pd-decider}}"
)


def _decider(params: str) -> str:
    return f"- type: prefix-based-pd-decider\n  parameters: {params}"


def _disaggregates(sched: object, prompt: str) -> bool:
    req = request(prompt)
    result = sched.schedule(req, [DECODE, PREFILL])  # type: ignore[attr-defined]
    sched.pre_request(req, result)  # type: ignore[attr-defined]
    return "prefill" in result.profile_results


def test_zero_non_cached_tokens_disables() -> None:
    sched = pd_scheduler(pd_config(HANDLER, _decider("{nonCachedTokens: 0}")))
    assert not _disaggregates(sched, "a" * 4000)


def test_threshold_on_the_prompt_then_on_the_uncached_suffix() -> None:
    sched = pd_scheduler(pd_config(HANDLER, _decider("{nonCachedTokens: 100}")))
    assert not _disaggregates(sched, "s" * 396)  # 99 tokens < 100
    prompt = "".join(chr(65 + i) * 256 for i in range(4))  # 256 tokens, 4 blocks, uncached
    assert _disaggregates(sched, prompt)
    # the decode endpoint now holds all 4 blocks: 256 - 256 = 0 uncached < 100
    assert not _disaggregates(sched, prompt)
    # 1 new block after the cached 4: 64 uncached tokens < 100; 2 new blocks: 128 >= 100
    assert not _disaggregates(sched, prompt + "E" * 256)
    assert _disaggregates(sched, prompt + "F" * 512)


def test_prompt_tokens_gate() -> None:
    sched = pd_scheduler(pd_config(HANDLER, _decider("{nonCachedTokens: 16, promptTokens: 200}")))
    assert not _disaggregates(sched, "q" * 796)  # 199 tokens
    assert _disaggregates(sched, "r" * 800)


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        pd_scheduler(pd_config(HANDLER, _decider("{nonCachedTokens: -1}")))
    first = err.value.problems[0]
    assert f"{first.path}: {first.message}" == (
        "plugins[prefix-based-pd-decider].parameters.nonCachedTokens: expected an integer >= 0, got -1"
    )
