"""llm-d's P/D guide configs (always-disagg-pd-decider: every request gets a prefill leg),
scheduled by kvgate against llm-d-router's documented semantics (see test_llmd_guides.py).

* pd-disaggregation (router): prefill = prefill-filter, prefix-cache-affinity-filter,
  token-load-scorer; decode = decode-filter, active-request-scorer.
* pd-disaggregation (scheduler): prefill = prefix 3, queue 2, kv 2; decode = active 2, prefix 2.
* wide-ep: prefill = prefix 3, queue 2, active 2; decode = active 1.

Roles follow llm-d-router's filters: a ``prefill-decode`` endpoint takes either leg.
active-request-scorer normalises by the busiest *candidate* (``(max − c)/max``, idle → 1).
"""

from __future__ import annotations

import pytest

from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import HEADER_PREFILLER, Endpoint, Request
from scheduling.guide_kit import (
    PROMPT,
    dispatch,
    endpoint,
    guide_scheduler,
    picked,
    scores,
    totals,
)

T = 4194304  # token-load-scorer's default queueThresholdTokens


def _busy(sched: Scheduler, eps: list[Endpoint], i: int, prefill: str, decode: str) -> None:
    """Put a 1000-token request in flight on ``prefill`` and ``decode``."""
    request = Request(f"busy{i}", "m", prompt=f"busy{i} ".ljust(4000, "y"))
    sched.schedule(request, eps)  # tokenizes it
    by_name = {e.name: e for e in eps}
    dispatch(sched, request, {"prefill": by_name[prefill], "decode": by_name[decode]}, "decode")


def test_pd_affinity_token_load() -> None:
    sched = guide_scheduler("pd-disaggregation_router_pd-disaggregation")
    eps = [endpoint("p0", 0, role="prefill"), endpoint("p1", 1, role="prefill"),
           endpoint("x", 2, role="prefill-decode"), endpoint("d0", 3, role="decode"),
           endpoint("d1", 4, role="decode")]  # fmt: skip
    _busy(sched, eps, 1, "p0", "d0")
    _busy(sched, eps, 2, "p0", "d0")
    _busy(sched, eps, 3, "p0", "x")
    # in flight: p0 3 requests / 3000 tokens, d0 2 / 2000, x 1 / 1000; p1, d1 idle

    r1 = Request("r1", "m", prompt=PROMPT)  # 352 tokens, cached nowhere
    result = sched.schedule(r1, eps)
    assert result.primary_profile_name == "decode"
    # decode: max over the candidates x, d0, d1 is 2
    assert scores(result, "decode") == {
        "x": {"active-request-scorer": 0.5},
        "d0": {"active-request-scorer": 0.0},
        "d1": {"active-request-scorer": 1.0},
    }
    # prefill: nothing sticky, all kept; token load 1 − (in flight + 352)/T
    assert scores(result, "prefill") == {
        "p0": {"token-load-scorer": 1 - 3352 / T},
        "p1": {"token-load-scorer": 1 - 352 / T},
        "x": {"token-load-scorer": 1 - 1352 / T},
    }
    assert (picked(result, "decode"), picked(result, "prefill")) == ("d1", "p1")
    headers = sched.pre_request(r1, result)
    assert headers[HEADER_PREFILLER] == "10.0.0.2:8000"

    r2 = Request("r2", "m", prompt=PROMPT + " Again!!")  # 354 tokens; p1 holds 5 blocks of 64
    result = sched.schedule(r2, eps)
    # p1 sticky (ratio 1); TTFT gate at 33821 tokens/s: p1's 352 tokens beat x's 1000
    assert scores(result, "prefill") == {"p1": {"token-load-scorer": 1 - (352 + 34) / T}}
    assert scores(result, "decode") == {
        "x": {"active-request-scorer": 0.5},
        "d0": {"active-request-scorer": 0.0},
        "d1": {"active-request-scorer": 0.5},
    }
    assert picked(result, "decode") in {"x", "d1"}


def test_pd_prefix_queue_kv() -> None:
    sched = guide_scheduler("pd-disaggregation_scheduler_pd-disaggregation")
    eps = [endpoint("p0", 0, role="prefill", queue=0, kv=0.5),
           endpoint("p1", 1, role="prefill", queue=4, kv=0.1),
           endpoint("x", 2, role="prefill-decode", queue=2, kv=0.3),
           endpoint("d0", 3, role="decode"), endpoint("d1", 4, role="decode")]  # fmt: skip
    _busy(sched, eps, 1, "p1", "d0")
    _busy(sched, eps, 2, "p1", "x")
    # active: p1 2, d0 1, x 1

    r1 = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(r1, eps)
    assert scores(result, "prefill") == {
        "p0": {"prefix-cache-scorer": 0.0, "queue-scorer": 1.0, "kv-cache-utilization-scorer": 0.5},
        "p1": {"prefix-cache-scorer": 0.0, "queue-scorer": 0.0,
               "kv-cache-utilization-scorer": pytest.approx(0.9)},
        "x": {"prefix-cache-scorer": 0.0, "queue-scorer": 0.5,
              "kv-cache-utilization-scorer": pytest.approx(0.7)},
    }  # fmt: skip
    assert totals(result, "prefill") == pytest.approx({"p0": 3.0, "p1": 1.8, "x": 2.4})
    assert scores(result, "decode") == {
        "x": {"active-request-scorer": 0.0, "prefix-cache-scorer": 0.0},
        "d0": {"active-request-scorer": 0.0, "prefix-cache-scorer": 0.0},
        "d1": {"active-request-scorer": 1.0, "prefix-cache-scorer": 0.0},
    }
    assert (picked(result, "decode"), picked(result, "prefill")) == ("d1", "p0")
    sched.pre_request(r1, result)  # the prompt is learnt on d1 (primary) and p0 (prefill)

    result = sched.schedule(Request("r2", "m", prompt=PROMPT + " Again!!"), eps)
    assert totals(result, "prefill") == pytest.approx({"p0": 6.0, "p1": 1.8, "x": 2.4})
    # every decode candidate has 1 request = the max: 0; the prefix decides
    assert totals(result, "decode") == {"x": 0.0, "d0": 0.0, "d1": 2.0}
    assert (picked(result, "decode"), picked(result, "prefill")) == ("d1", "p0")


def test_wide_ep() -> None:
    sched = guide_scheduler("wide-ep_router_wide-ep")
    eps = [endpoint("p0", 0, role="prefill", queue=0), endpoint("p1", 1, role="prefill", queue=4),
           endpoint("d0", 2, role="decode"), endpoint("d1", 3, role="decode")]  # fmt: skip
    _busy(sched, eps, 1, "p0", "d0")
    _busy(sched, eps, 2, "p0", "d1")
    _busy(sched, eps, 3, "p1", "d0")
    # active: p0 2, p1 1, d0 2, d1 1 (one scorer instance counts both legs)

    r1 = Request("r1", "m", prompt=PROMPT)
    result = sched.schedule(r1, eps)
    assert scores(result, "prefill") == {
        "p0": {"prefix-cache-scorer": 0.0, "queue-scorer": 1.0, "active-request-scorer": 0.0},
        "p1": {"prefix-cache-scorer": 0.0, "queue-scorer": 0.0, "active-request-scorer": 0.5},
    }
    assert totals(result, "prefill") == {"p0": 2.0, "p1": 1.0}
    assert scores(result, "decode") == {
        "d0": {"active-request-scorer": 0.0},
        "d1": {"active-request-scorer": 0.5},
    }
    assert (picked(result, "decode"), picked(result, "prefill")) == ("d1", "p0")
    headers = sched.pre_request(r1, result)  # disagg-headers-handler
    assert headers[HEADER_PREFILLER] == "10.0.0.1:8000"

    # p0 now holds the prompt and 3 requests: prefix 3 + queue 2 outweigh its load
    result = sched.schedule(Request("r2", "m", prompt=PROMPT + " Again!!"), eps)
    assert totals(result, "prefill") == {"p0": 5.0, "p1": 2 * (3 - 1) / 3}
    assert picked(result, "prefill") == "p0"
