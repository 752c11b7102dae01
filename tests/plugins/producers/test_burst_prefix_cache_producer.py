"""burst-prefix-cache-producer: a window's same-prompt requests follow the first one's replica."""

from __future__ import annotations

import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.errors import PluginParameterError
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from plugins.kit import FakeClock, ctx, endpoint, make, request

TYPE = "burst-prefix-cache-producer"
KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, TYPE)
EPS = [endpoint(n, running_requests_size=r) for n, r in (("a", 2), ("b", 1), ("c", 0))]
PROMPT = "x" * 4 * 64 * 3  # three blocks of 64 estimated tokens


def _run(producer: object, req: Request, to: str | None) -> dict[str, float]:
    """Produce for ``req``; when ``to`` names a replica, tell PreRequest it was sent there."""
    producer.produce(CycleState(), req, EPS)  # type: ignore[attr-defined]
    infos = data.per_endpoint(req, KEY, PrefixCacheMatchInfo) or {}
    if to is not None:
        target = next(e for e in EPS if e.name == to)
        result = SchedulingResult({"default": ProfileRunResult((target,))}, "default")
        producer.pre_request(req, result, {})  # type: ignore[attr-defined]
    return {n: i.ratio for n, i in infos.items()}


def test_a_group_follows_its_first_member_and_spills_past_max_per_replica() -> None:
    clock = FakeClock()
    p = make(TYPE, {"maxPerReplica": 2}, c=ctx(clock=clock))
    assert _run(p, request(PROMPT), "a") == {"a": 0.0, "b": 0.0, "c": 0.0}  # first: no affinity
    assert _run(p, request(PROMPT), "a") == {"a": 1.0, "b": 0.0, "c": 0.0}
    # a holds 2 (the cap): spill to the least window-loaded, then fewest running (c)
    assert _run(p, request(PROMPT), "c") == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert _run(p, request("y" * 4 * 64), None) == {"a": 0.0, "b": 0.0, "c": 0.0}  # a stranger
    clock.advance(0.1)  # the window closes: the next request starts a fresh one
    assert _run(p, request(PROMPT), None) == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_prefix_sharing_requests_colocate_below_the_fair_share() -> None:
    p = make(TYPE, {"minColocateBlocks": 2}, c=ctx(clock=FakeClock()))
    base = "s" * 4 * 64 * 2
    _run(p, request(base + "q" * 4 * 64), "b")
    # shares 2 leading blocks with b's request, but b is at its fair share (ceil(2 / 3) = 1)
    assert _run(p, request(base + "r" * 4 * 64), "a")["b"] == 0.0
    p = make(TYPE, {"minColocateBlocks": 2}, c=ctx(clock=FakeClock()))
    for other in ("a", "c"):  # load the others so b stays under the fair share
        _run(p, request(other * 4 * 64 * 3), other)
    _run(p, request(base + "q" * 4 * 64), "b")
    assert _run(p, request(base + "r" * 4 * 64), None) == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert _run(p, request("s" * 4 * 64 + "t" * 4 * 64 * 2), None)["b"] == 0.0  # 1 block < 2


def test_max_batch_size_caps_a_window() -> None:
    p = make(TYPE, {"maxBatchSize": 1}, c=ctx(clock=FakeClock()))
    _run(p, request(PROMPT), "a")
    assert _run(p, request(PROMPT), None)["a"] == 0.0  # the window is full


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"windowDurationMs": 0}, "windowDurationMs"),
        ({"windowDurationMs": 10001}, "windowDurationMs"),
        ({"maxPerReplica": 0}, "maxPerReplica"),
        ({"maxPrefixTokensToMatch": 10}, "maxPrefixTokensToMatch"),
        ({"maxBatchSize": -2}, "maxBatchSize"),
        ({"balanceBy": "bytes"}, "balanceBy"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, params)
    assert err.value.field == field


CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
- type: prefix-cache-scorer
  parameters:
    prefixMatchInfoProducerName: burst-prefix-cache-producer
- type: load-aware-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 2.0
  - pluginRef: load-aware-scorer
    weight: 1.0
  - pluginRef: max-score-picker
"""


def test_the_published_plugin_set_steers_a_burst_to_one_replica() -> None:
    # llm-d-router's epp-burst-prefix-cache-config without its remote token-producer
    scheduler = build_scheduler(load_picker_config(text=CONFIG, env={}))
    eps = [Endpoint(n, f"10.0.0.{i}", 8000) for i, n in enumerate(("a", "b", "c"))]
    picks = []
    for i in range(4):
        req = request(PROMPT, request_id=f"r{i}")
        result = scheduler.schedule(req, eps)
        scheduler.pre_request(req, result)
        picks.append(result.primary.targets[0].name)
    assert len(set(picks)) == 1
