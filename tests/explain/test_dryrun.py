"""The dry run with real parts: whatever it scores, the next real request is scheduled as if it
had not happened (indexes, random generators, round-robin position, metrics)."""

from __future__ import annotations

import copy
import json
import random
import time

import pytest

from kvgate.config import build_scheduler, load_picker_config, policy_config_text
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.errors import ModelNotFoundError
from kvgate.explain import explain_request
from kvgate.explain.dryrun import fresh_copy
from kvgate.plugins.base import PluginContext
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheScorer
from kvgate.requestcontrol.build import build_request_control
from kvgate.requestcontrol.control import RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.scheduling.types import Metrics, Request, ResponseInfo

SHARED = "You are a careful assistant. " * 40


def make_control(policy: str) -> RequestControl:
    config = load_picker_config(text=policy_config_text(policy))
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    pool = EndpointPool()
    for i in range(3):
        name = f"ep{i}"
        pool.upsert(EndpointSpec(name, "127.0.0.1", 8000 + i), healthy=True)
        pool.update_metrics(name, Metrics(updated_at=time.monotonic()))
    models = {"ep0": {"m"}, "ep1": {"m"}, "ep2": {"m"}}
    return build_request_control(
        pool, scheduler, RequestMetrics(pool), config, log_requests=False, models_of=models.get
    )


def parsed(control: RequestControl, prompt: str, model: str = "m") -> Request:
    ctx = control.begin("gateway", "/v1/completions")
    body = json.dumps({"model": model, "prompt": prompt}).encode()
    return control.parse(ctx, "completions", body, {})


async def serve(control: RequestControl, prompt: str) -> str:
    ctx = control.begin("gateway", "/v1/completions")
    control.started(ctx)
    control.parse(ctx, "completions", json.dumps({"model": "m", "prompt": prompt}).encode(), {})
    result = await control.route(ctx)
    control.start_attempt(ctx, result.target)
    control.end_attempt(ctx, ResponseInfo(status=200))
    control.finish(ctx, 200)
    return result.target.name


def metric_total(control: RequestControl, name: str) -> float:
    return sum(
        s.value for m in control.metrics.registry.collect() for s in m.samples if s.name == name
    )


def prefix_scorer(control: RequestControl) -> PrefixCacheScorer:
    found = [p for p in control.scheduler.plugins if isinstance(p, PrefixCacheScorer)]
    assert len(found) == 1
    return found[0]


async def test_explain_shows_the_prefix_and_learns_nothing() -> None:
    control = make_control("llm-d-default")
    served = await serve(control, SHARED + "first question")
    index = prefix_scorer(control).index
    blocks_before = copy.deepcopy(index._blocks)
    plugin_calls = metric_total(control, "kvgate_plugin_duration_seconds_count")
    requests = metric_total(control, "kvgate_requests_total")

    report = explain_request(control, parsed(control, SHARED + "second question"))

    assert report["pick"] == served
    rows = {r["name"]: r for r in report["endpoints"]}
    held = rows[served]["prefix"]["approximate"]
    assert held["blocks"] > 0 and held["tokens"] > 0 and held["total_blocks"] >= held["blocks"]
    others = [r for name, r in rows.items() if name != served]
    assert all(r["scores"]["prefix-cache-scorer"] == 0.0 for r in others)
    assert rows[served]["scores"]["prefix-cache-scorer"] > 0.9
    assert rows[served]["total"] == max(r["total"] for r in rows.values())
    assert [s["name"] for s in report["scorers"]] == [
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
    ]
    # nothing learnt, counted or observed
    assert index._blocks == blocks_before
    assert metric_total(control, "kvgate_plugin_duration_seconds_count") == plugin_calls
    assert metric_total(control, "kvgate_requests_total") == requests


@pytest.mark.parametrize("policy", ["round-robin", "random"])
async def test_the_next_real_pick_is_the_explained_pick(policy: str) -> None:
    control = make_control(policy)
    for i in range(5):
        explained = explain_request(control, parsed(control, f"prompt {i}"))["pick"]
        again = explain_request(control, parsed(control, f"prompt {i}"))["pick"]
        assert explained == again == await serve(control, f"prompt {i}")


async def test_a_logged_request_is_scored_again_from_scratch() -> None:
    control = make_control("llm-d-default")
    ctx = control.begin("gateway", "/v1/completions")
    control.parse(ctx, "completions", json.dumps({"model": "m", "prompt": SHARED}).encode(), {})
    await control.route(ctx)
    assert ctx.request is not None and ctx.request.extra  # memoised by the first cycle
    copy_ = fresh_copy(ctx.request)
    assert copy_.extra == {} and copy_.produced == {} and copy_.prompt == SHARED
    assert explain_request(control, copy_)["pick"] is not None


def test_unknown_model_is_the_request_paths_404() -> None:
    control = make_control("llm-d-default")
    with pytest.raises(ModelNotFoundError):
        explain_request(control, parsed(control, "x", model="other"))
