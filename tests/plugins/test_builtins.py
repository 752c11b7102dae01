"""Every built-in plugin module of this area loads, registers under its llm-d name and builds
with default parameters; random plugin combinations always pick a candidate."""

from __future__ import annotations

import importlib

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.plugins.registry import BUILTIN_MODULES, default_registry
from plugins.kit import ctx, endpoint, make, request, scheduler

OWN = [
    m
    for m in BUILTIN_MODULES
    if m.startswith("kvgate.plugins.")  # flow-control policies live in kvgate.flowcontrol
    and not m.endswith(
        ("precise_prefix_cache_scorer", "oracle_prefix_scorer", "precise_prefix_cache_producer")
    )
]
NEEDS_PARAMS = {
    "by-label",
    "request-attribute-reporter",
    "disaggregatedset-rollout-screener",
    "header-label-affinity-scorer",
}
SCORERS = [
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-size-scorer",
    "load-aware-scorer",
    "active-request-scorer",
    "session-affinity-scorer",
    "lora-affinity-scorer",
    "prefix-cache-scorer",
    "no-hit-lru-scorer",
]
PICKERS = ["max-score-picker", "random-picker", "weighted-random-picker", "round-robin-picker"]


def test_modules_export_type_and_factory_named_after_the_file() -> None:
    for module_name in OWN:
        module = importlib.import_module(module_name)
        assert module.TYPE.replace("-", "_") == module_name.rsplit(".", 1)[1]
        assert default_registry().canonical(module.TYPE) == module.TYPE
        if module.TYPE not in NEEDS_PARAMS:
            plugin = make(module.TYPE)
            assert plugin.type_name == module.TYPE and plugin.name == module.TYPE


@settings(max_examples=40, deadline=None)
@given(
    scorers=st.lists(
        st.tuples(st.sampled_from(SCORERS), st.floats(0, 10)), max_size=4, unique_by=lambda t: t[0]
    ),
    picker=st.sampled_from(PICKERS),
    metrics=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 64), st.floats(0, 1), st.integers(0, 16)),
        min_size=1,
        max_size=8,
    ),
    prompt=st.text(max_size=300),
    seed=st.integers(0, 1000),
)
def test_any_combination_picks_a_candidate(
    scorers: list[tuple[str, float]],
    picker: str,
    metrics: list[tuple[int, int, float, int]],
    prompt: str,
    seed: int,
) -> None:
    c = ctx(seed)
    eps = [
        endpoint(
            f"e{i}",
            waiting_queue_size=q,
            running_requests_size=r,
            kv_cache_usage_percent=kv,
            cache_block_size=b,
        )
        for i, (q, r, kv, b) in enumerate(metrics)
    ]
    sched = scheduler([(make(t, c=c), w) for t, w in scorers], picker=make(picker, c=c), c=c)
    req = request(prompt)
    result = sched.schedule(req, eps)
    assert result.target in eps
    sched.pre_request(req, result)
    assert all(0.0 <= v <= 1.0 for s in result.primary.scored for v in s.scores.values())
