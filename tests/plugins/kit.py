"""Builders shared by the plugin tests: endpoints with metrics, requests, a scheduler."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import default_registry
from kvgate.scheduling.scheduler import Scheduler, SchedulerProfile, WeightedScorer
from kvgate.scheduling.types import CycleState, Endpoint, Metrics, Request


class FakeClock:
    """A settable clock (the plugins' only time source)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ctx(seed: int = 7, clock: FakeClock | None = None) -> PluginContext:
    return PluginContext(rng=random.Random(seed), clock=clock or FakeClock())


def endpoint(name: str, labels: Mapping[str, str] | None = None, **metrics: Any) -> Endpoint:
    port = 8000 + sum(name.encode()) % 1000
    return Endpoint(name, "10.0.0.1", port, dict(labels or {}), Metrics(**metrics))


def request(
    prompt: str | None = "hello",
    *,
    model: str = "m",
    messages: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str = "r1",
    target_model: str | None = None,
) -> Request:
    kind = "chat" if messages is not None else "completions"
    return Request(
        request_id,
        model,
        kind=kind,
        prompt=None if messages is not None else prompt,
        messages=messages,
        headers=dict(headers or {}),
        target_model=target_model,
    )


def make(
    type_name: str,
    params: Mapping[str, Any] | None = None,
    c: PluginContext | None = None,
    name: str | None = None,
) -> Any:
    context = c or ctx()
    plugin = default_registry().create(type_name, name or type_name, params, context)
    context.plugins[plugin.name] = plugin
    return plugin


def score(
    plugin: Any,
    eps: Sequence[Endpoint],
    req: Request | None = None,
    state: CycleState | None = None,
) -> dict[str, float]:
    return dict(plugin.score(state or CycleState(), req or request(), eps))


def scheduler(
    scorers: Sequence[tuple[Any, float]],
    *,
    picker: Any = None,
    filters: Sequence[Any] = (),
    c: PluginContext | None = None,
    extra: Sequence[Any] = (),
) -> Scheduler:
    context = c or ctx()
    pick = picker or make("max-score-picker", c=context)
    profile = SchedulerProfile(
        "default", tuple(filters), tuple(WeightedScorer(s, w) for s, w in scorers), pick
    )
    handler = make("single-profile-handler", c=context)
    plugins = [*filters, *(s for s, _ in scorers), pick, handler, *extra]
    return Scheduler({"default": profile}, handler, plugins)
