"""Shared pieces of the llm-d guide equivalence tests (tests/scheduling/test_llmd_guides*.py).

Each guide file under tests/data/llm-d-configs/ is loaded verbatim with the loader the
published-config test uses, built with a seeded RNG, and run over hand-built endpoints.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.kvcache.tokenize import builtin_tokenizer_dir
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import (
    ROLE_LABEL,
    Endpoint,
    Metrics,
    ProfileRunResult,
    Request,
    SchedulingResult,
)

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "llm-d-configs"

#: Prompt of 1408 bytes: 5 full blocks of 256 B (64 tokens of 4 B, llm-d's ``estimate``
#: packing) for the approximate producer, 352 estimated tokens.
PROMPT = "The quick brown fox jumps over the lazy dog, twice. " * 27 + "abcd"
assert len(PROMPT.encode()) == 1408


def guide(name: str) -> Path:
    """The guide file ``llm-d__guides_<name>.values.yaml``; fails when it is missing."""
    path = CONFIGS / f"llm-d__guides_{name}.values.yaml"
    assert path.is_file(), f"{path}: guide config missing"
    return path


def guide_scheduler(name: str, seed: int = 3) -> Scheduler:
    config = load_picker_config(guide(name), env={})
    return build_scheduler(config, PluginContext(rng=random.Random(seed)))


def endpoint(
    name: str,
    i: int,
    *,
    queue: int = 0,
    kv: float = 0.0,
    role: str | None = None,
    gpu_blocks: int = 4096,
) -> Endpoint:
    """A scraped vLLM endpoint (block size 16, which llm-d's producer raises to 64 tokens)."""
    metrics = Metrics(waiting_queue_size=queue, kv_cache_usage_percent=kv, cache_block_size=16,
                      cache_num_gpu_blocks=gpu_blocks, updated_at=time.monotonic())  # fmt: skip
    labels = {ROLE_LABEL: role} if role else {}
    return Endpoint(name, f"10.0.0.{i + 1}", 8000, labels, metrics)


def scores(result: SchedulingResult, profile: str | None = None) -> dict[str, dict[str, float]]:
    """Filter survivors of ``profile`` (default: the primary) -> per-scorer clamped scores."""
    run = result.profile_results[profile or result.primary_profile_name]
    assert run is not None
    return {s.endpoint.name: dict(s.scores) for s in run.scored}


def totals(result: SchedulingResult, profile: str | None = None) -> dict[str, float]:
    run = result.profile_results[profile or result.primary_profile_name]
    assert run is not None
    return {s.endpoint.name: s.score for s in run.scored}


def picked(result: SchedulingResult, profile: str | None = None) -> str:
    run = result.profile_results[profile or result.primary_profile_name]
    assert run is not None
    return run.targets[0].name


def dispatch(
    sched: Scheduler, request: Request, targets: Mapping[str, Endpoint], primary: str
) -> dict[str, str]:
    """Run PreRequest as if ``request`` had been sent to ``targets`` (profile -> endpoint),
    e.g. to load an endpoint whatever the scorers would have picked; returns the headers."""
    results = {name: ProfileRunResult((e,)) for name, e in targets.items()}
    return sched.pre_request(request, SchedulingResult(results, primary))


def fake_hf_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *models: str) -> None:
    """The guides name real models; kvgate loads a named model's own tokenizer (no silent
    fallback), so the tests put SmolLM2's under those names in an offline Hub cache."""
    for model in models:
        snapshot = tmp_path / f"models--{model.replace('/', '--')}" / "snapshots" / "0"
        snapshot.mkdir(parents=True)
        for f in builtin_tokenizer_dir().iterdir():
            if f.is_file():
                shutil.copy(f, snapshot / f.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
