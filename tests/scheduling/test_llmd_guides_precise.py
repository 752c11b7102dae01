"""llm-d's precise prefix-cache guide configs (KV events from the engines), scheduled by
kvgate against llm-d-router's documented semantics (see test_llmd_guides.py).

* precise-prefix-cache-aware (scheduler): decode-filter; precise 2, kv 1, queue 1.
* precise-prefix-cache-routing (router): decode-filter; kv 2, queue 2, precise 3, no-hit-lru 2
  (no-hit-lru names no producer: it reads approx-prefix-cache-producer, which llm-d adds).
* pd-multi-tier: P/D; prefill = prefill-filter, precise (tiers gpu 1.0, cpu 0.4, blocks of
  128 tokens) 3, queue 2, kv 2; decode = decode-filter, active-request 2.
* p2p-kv-cache-sharing: precise 3, queue 2, kv 2, no-hit-lru 2 (on the precise producer) and
  p2p-source-producer (peer with >= 2048 more cached tokens -> x-kv-cache-source-host-port).

The precise score of an endpoint is its tier-weighted run of leading blocks held over the
request's full blocks; engines' KV events are applied to the index directly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvgate.kvcache.events import BlockStored, EventBatch
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.plugins.producers.p2p_source_producer import HEADER_KV_CACHE_SOURCE
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import Endpoint, Request
from scheduling.guide_kit import (
    dispatch,
    endpoint,
    fake_hf_models,
    guide_scheduler,
    picked,
    scores,
    totals,
)

#: 561 tokens with the built-in tokenizer: 8 full blocks of 64, 4 of 128
PROMPT = "Once upon a time, in a land of routers and caches, " * 40


@pytest.fixture(autouse=True)
def _guide_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hf_models(tmp_path, monkeypatch, "Qwen/Qwen3-32B", "openai/gpt-oss-120b")


def _store(
    index: object, ep: Endpoint, ids: list[int], blocks: int, size: int, medium: str
) -> None:
    """The engine at ``ep`` reports holding the first ``blocks`` blocks of ``ids``."""
    stored = BlockStored(
        list(range(1, blocks + 1)), None, ids[: blocks * size], size, medium=medium
    )
    index.apply_batch(ep.hostport, EventBatch(time.time(), [stored]))  # type: ignore[attr-defined]


def _index(sched: Scheduler, type_name: str) -> object:
    plugin = next(p for p in sched.plugins if p.type_name == type_name)
    return plugin.index if hasattr(plugin, "index") else plugin.core.index  # type: ignore[attr-defined]


def _decode_pool() -> list[Endpoint]:
    return [endpoint("e0", 0, queue=0, kv=0.5, role="decode"), endpoint("e1", 1, role="prefill"),
            endpoint("e2", 2, queue=8, kv=0.1, role="decode"), endpoint("e3", 3, queue=4, kv=0.3)]  # fmt: skip


def test_precise_decode_filter() -> None:
    sched = guide_scheduler("precise-prefix-cache-aware_scheduler_precise-prefix-cache-aware")
    eps = _decode_pool()
    ids = Tokenizer.default().encode(PROMPT)
    assert len(ids) // 64 == 8
    index = _index(sched, "precise-prefix-cache-scorer")
    _store(index, eps[2], ids, 8, 64, "GPU")
    _store(index, eps[0], ids, 1, 64, "CPU")
    _store(index, eps[3], ids, 4, 64, "GPU")
    result = sched.schedule(Request("r1", "m", prompt=PROMPT), eps)
    # decode-filter drops e1 (prefill); e3 has no role label and stays
    assert scores(result) == {
        "e0": {"precise-prefix-cache-scorer": 0.8 / 8, "kv-cache-utilization-scorer": 0.5,
               "queue-scorer": 1.0},
        "e2": {"precise-prefix-cache-scorer": 1.0, "kv-cache-utilization-scorer": pytest.approx(0.9),
               "queue-scorer": 0.0},
        "e3": {"precise-prefix-cache-scorer": 0.5, "kv-cache-utilization-scorer": pytest.approx(0.7),
               "queue-scorer": 0.5},
    }  # fmt: skip
    assert totals(result) == pytest.approx({"e0": 1.7, "e2": 2.9, "e3": 2.2})
    assert picked(result) == "e2"


def test_precise_no_hit_lru() -> None:
    sched = guide_scheduler("precise-prefix-cache-routing_router_precise-prefix-cache-routing")
    eps = _decode_pool()
    ids = Tokenizer.default().encode(PROMPT)
    index = _index(sched, "precise-prefix-cache-scorer")
    _store(index, eps[2], ids, 8, 64, "GPU")
    _store(index, eps[3], ids, 4, 64, "GPU")
    r1 = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(r1, eps)
    got = scores(result)
    # cold for the routing history (approx producer): never-used 1 − i/(N − 1), N = 3
    assert [got[n]["no-hit-lru-scorer"] for n in ("e0", "e2", "e3")] == [1.0, 0.5, 0.0]
    assert [got[n]["precise-prefix-cache-scorer"] for n in ("e0", "e2", "e3")] == [0, 1.0, 0.5]
    # kv 2, queue 2, precise 3, no-hit-lru 2
    assert totals(result) == pytest.approx({"e0": 5.0, "e2": 5.8, "e3": 3.9})
    assert picked(result) == "e2"
    sched.pre_request(r1, result)

    result = sched.schedule(Request("r2", "m", prompt=PROMPT), eps)
    # r1 went to e2, so the prompt is no longer cold: 0.5 everywhere
    assert {s["no-hit-lru-scorer"] for s in scores(result).values()} == {0.5}
    assert totals(result) == pytest.approx({"e0": 4.0, "e2": 5.8, "e3": 4.9})
    assert picked(result) == "e2"


def test_pd_multi_tier() -> None:
    sched = guide_scheduler("pd-disaggregation_router_pd-multi-tier")
    eps = [endpoint("p0", 0, role="prefill", queue=0, kv=0.5),
           endpoint("p1", 1, role="prefill", queue=4, kv=0.1),
           endpoint("d0", 2, role="decode"), endpoint("d1", 3, role="decode")]  # fmt: skip
    ids = Tokenizer.default().encode(PROMPT)
    assert len(ids) // 128 == 4
    index = _index(sched, "precise-prefix-cache-producer")
    _store(index, eps[0], ids, 4, 128, "CPU")  # the CPU tier weighs 0.4 in this guide
    _store(index, eps[1], ids, 3, 128, "GPU")
    busy = Request("busy", "m", prompt="busy " * 50)
    sched.schedule(busy, eps)
    dispatch(sched, busy, {"decode": eps[2], "prefill": eps[1]}, "decode")

    result = sched.schedule(Request("r1", "m", prompt=PROMPT), eps)
    assert scores(result, "prefill") == {
        "p0": {"precise-prefix-cache-scorer": 0.4, "queue-scorer": 1.0,
               "kv-cache-utilization-scorer": 0.5},
        "p1": {"precise-prefix-cache-scorer": 0.75, "queue-scorer": 0.0,
               "kv-cache-utilization-scorer": pytest.approx(0.9)},
    }  # fmt: skip
    assert totals(result, "prefill") == pytest.approx({"p0": 4.2, "p1": 4.05})
    # active requests over the decode candidates: d0 1 (the max) -> 0, d1 idle -> 1
    assert totals(result, "decode") == {"d0": 0.0, "d1": 2.0}
    assert (picked(result, "decode"), picked(result, "prefill")) == ("d1", "p0")


def test_p2p_source() -> None:
    sched = guide_scheduler("p2p-kv-cache-sharing_router_p2p-kv-cache-sharing")
    prompt = PROMPT * 5  # 2801 tokens: 43 full blocks of 64
    ids = Tokenizer.default().encode(prompt)
    n = len(ids) // 64
    assert n * 64 >= 2048
    # e0 holds the whole prompt but is saturated; e1 idle, nothing cached
    eps = [endpoint("e0", 0, queue=8, kv=1.0), endpoint("e1", 1, queue=0, kv=0.0),
           endpoint("e2", 2, queue=4, kv=0.5)]  # fmt: skip
    _store(_index(sched, "precise-prefix-cache-producer"), eps[0], ids, n, 64, "GPU")
    request = Request("r1", "m", prompt=prompt)
    result = sched.schedule(request, eps)
    got = scores(result)
    assert got["e0"] == {"prefix-cache-scorer": 1.0, "queue-scorer": 0.0,
                         "kv-cache-utilization-scorer": 0.0, "no-hit-lru-scorer": 0.5}  # fmt: skip
    assert got["e1"] == {"prefix-cache-scorer": 0.0, "queue-scorer": 1.0,
                         "kv-cache-utilization-scorer": 1.0, "no-hit-lru-scorer": 0.5}  # fmt: skip
    # prefix 3, queue 2, kv 2, no-hit-lru 2: e0 4.0, e1 5.0, e2 1 + 1 + 1 = 3.0
    assert totals(result) == {"e0": 4.0, "e1": 5.0, "e2": 3.0}
    assert picked(result) == "e1"
    # e1 computes ("default" is the guide's prefillProfileName); e0, the only endpoint
    # within a block of the most cached tokens, holds n·64 >= minCachedTokenDelta 2048 more
    headers = sched.pre_request(request, result)
    assert headers[HEADER_KV_CACHE_SOURCE] == eps[0].hostport
