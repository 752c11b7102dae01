"""llm-d's guide configurations, scheduled by kvgate: picks, per-scorer scores and filter
survivors against the formulas llm-d documents for each plugin.

Config texts are copied from llm-d/llm-d-router (Apache-2.0) at commit
ebab687927f5331c1b39defcb579a07951bce56c:
``test/perf/config/router-configs/optimized-baseline.yaml`` (the optimized-baseline /
inference-scheduling guide's plugins) and ``deploy/config/epp-precise-prefix-cache-config.yaml``
(the precise prefix-cache guide's split pipeline), the latter without its ``dataLayer`` wiring
of data sources, which kvgate's scraper does without.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from kvgate.config import build_scheduler
from kvgate.config.loader import load_picker_config_text
from kvgate.kvcache.events import BlockStored, EventBatch
from kvgate.kvcache.tokenize import Tokenizer, builtin_tokenizer_dir
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import ROLE_LABEL, Endpoint, Metrics, Request

OPTIMIZED_BASELINE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: approx-prefix-cache-producer
  parameters:
    maxPrefixTokensToMatch: 100000
- type: prefix-cache-scorer
- type: no-hit-lru-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: no-hit-lru-scorer
    weight: 2
"""

PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: token-producer
    parameters:
      modelName: hf-repo/model-name           # set to the model used in the vLLM deployment
      vllm:
        url: http://localhost:8000
  - type: single-profile-handler
  - type: decode-filter
  - type: precise-prefix-cache-producer
    parameters:
      tokenProcessorConfig:
        blockSize: 64
      indexerConfig:
        kvBlockIndexConfig:
          enableMetrics: true       # enable kv-block index metrics (prometheus)
  - type: prefix-cache-scorer
    parameters:
      prefixMatchInfoProducerName: precise-prefix-cache-producer
  - type: kv-cache-utilization-scorer
  - type: queue-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2.0
      - pluginRef: kv-cache-utilization-scorer
        weight: 1.0
      - pluginRef: queue-scorer
        weight: 1.0
      - pluginRef: max-score-picker
"""


def _scheduler(text: str) -> Scheduler:
    config = load_picker_config_text(text, "guide.yaml")
    return build_scheduler(config, PluginContext(rng=random.Random(3)))


def _endpoints(**labels: str) -> list[Endpoint]:
    # queue 0 / 4 / 8, KV usage 0.5 / 0.2 / 0.1: vLLM block size 16 (auto-tunes to 64 tokens)
    out = []
    for i, (queue, kv) in enumerate(((0, 0.5), (4, 0.2), (8, 0.1))):
        m = Metrics(waiting_queue_size=queue, kv_cache_usage_percent=kv, cache_block_size=16,
                    updated_at=time.monotonic())  # fmt: skip
        role = {ROLE_LABEL: labels[f"e{i}"]} if f"e{i}" in labels else {}
        out.append(Endpoint(f"e{i}", f"10.0.0.{i + 1}", 8000, role, m))
    return out


def test_optimized_baseline_adds_nothing_and_runs_the_producer_first() -> None:
    sched = _scheduler(OPTIMIZED_BASELINE)
    assert [p.type_name for p in sched.producers] == ["approx-prefix-cache-producer"]


def test_optimized_baseline_cold_then_warm() -> None:
    sched = _scheduler(OPTIMIZED_BASELINE)
    eps = _endpoints()
    prompt = "The quick brown fox jumps over the lazy dog. " * 30  # 1350 B: 5 blocks of 256 B
    cold = Request("r1", "m", prompt=prompt)
    result = sched.schedule(cold, eps)
    scored = {s.endpoint.name: s.scores for s in result.primary.scored}
    # queue-scorer: (maxQ − q)/(maxQ − minQ); kv: 1 − usage; prefix: nothing cached yet;
    # no-hit-lru, cold, all never used: 1 − i/(N − 1) in candidate order.
    assert scored["e0"] == {"queue-scorer": 1.0, "kv-cache-utilization-scorer": 0.5,
                            "prefix-cache-scorer": 0.0, "no-hit-lru-scorer": 1.0}  # fmt: skip
    assert scored["e1"]["queue-scorer"] == 0.5 and scored["e1"]["no-hit-lru-scorer"] == 0.5
    assert scored["e2"]["kv-cache-utilization-scorer"] == pytest.approx(0.9)
    totals = {s.endpoint.name: s.score for s in result.primary.scored}
    assert totals["e0"] == pytest.approx(2 * 1.0 + 2 * 0.5 + 0 + 2 * 1.0)
    assert result.target.name == "e0"
    sched.pre_request(cold, result)

    warm = Request("r2", "m", prompt=prompt + " And then some.")
    result = sched.schedule(warm, eps)
    scored = {s.endpoint.name: s.scores for s in result.primary.scored}
    # e0 holds all 5 of the request's full blocks: ratio 5/5; warm → no-hit-lru 0.5 for all
    assert [scored[n]["prefix-cache-scorer"] for n in ("e0", "e1", "e2")] == [1.0, 0.0, 0.0]
    assert {scored[n]["no-hit-lru-scorer"] for n in scored} == {0.5}
    assert result.target.name == "e0"


@pytest.fixture
def guide_model_in_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide names ``hf-repo/model-name``; kvgate loads a named model's own tokenizer (no
    silent fallback), so the test puts SmolLM2's under that name in an offline Hub cache."""
    snapshot = tmp_path / "models--hf-repo--model-name" / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    for f in builtin_tokenizer_dir().iterdir():
        if f.is_file():
            shutil.copy(f, snapshot / f.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("guide_model_in_hf_cache")
def test_precise_split_pipeline() -> None:
    sched = _scheduler(PRECISE)
    eps = _endpoints(e0="decode", e1="prefill", e2="both")
    producer = next(p for p in sched.producers if p.type_name == "precise-prefix-cache-producer")
    assert [p.type_name for p in sched.producers] == ["token-producer", producer.type_name]
    prompt = "Once upon a time, in a land of routers and caches, " * 40
    ids = Tokenizer.default().encode(prompt)
    n = len(ids) // 64
    assert n >= 3
    index = producer.core.index  # type: ignore[attr-defined]
    gpu = BlockStored(list(range(1, n + 1)), None, ids[: n * 64], 64, medium="GPU")
    cpu = BlockStored([100], None, ids[:64], 64, medium="CPU")
    index.apply_batch(eps[0].hostport, EventBatch(time.time(), [gpu]))
    index.apply_batch(eps[2].hostport, EventBatch(time.time(), [cpu]))
    result = sched.schedule(Request("r1", "m", prompt=prompt), eps)
    scored = {s.endpoint.name: s.scores for s in result.primary.scored}
    # decode-filter keeps decode/both (and unlabelled) endpoints: e1 (prefill) is dropped
    assert sorted(scored) == ["e0", "e2"]
    # prefix: tier-weighted held blocks / full blocks (gpu 1.0, cpu 0.8)
    assert scored["e0"]["prefix-cache-scorer"] == 1.0
    assert scored["e2"]["prefix-cache-scorer"] == pytest.approx(0.8 / n)
    # queue min-max over the survivors (0 and 8); kv 1 − usage
    assert scored["e0"]["queue-scorer"] == 1.0 and scored["e2"]["queue-scorer"] == 0.0
    assert result.target.name == "e0"
