"""inflight-load-producer: counts from PreRequest to ResponseComplete, prefix discount, output."""

from __future__ import annotations

from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad, PrefixCacheMatchInfo, TokenizedPrompt
from kvgate.scheduling.types import CycleState, ProfileRunResult, ResponseInfo, SchedulingResult
from plugins.kit import endpoint, make, request

TYPE = "inflight-load-producer"
KEY = DataKey(data.IN_FLIGHT_LOAD, TYPE)
A, B = endpoint("a"), endpoint("b")


def _request(tokens: int, request_id: str = "r1", **body: int):  # type: ignore[no-untyped-def]
    req = request(request_id=request_id)
    req.body = dict(body)
    data.put_tokenized(req, DataKey(data.TOKENIZED_PROMPT, "token-producer"),
                       TokenizedPrompt(tuple(range(tokens)), estimated=True))  # fmt: skip
    return req


def _send(p: object, req: object, *targets: object) -> None:
    results = {f"p{i}": ProfileRunResult((t,)) for i, t in enumerate(targets)}
    p.pre_request(req, SchedulingResult(results, "p0"), {})  # type: ignore[attr-defined]


def _loads(p: object) -> dict[str, InFlightLoad]:
    req = request()
    p.produce(CycleState(), req, [A, B])  # type: ignore[attr-defined]
    return dict(data.per_endpoint(req, KEY, InFlightLoad) or {})


def test_counts_every_profile_target_until_the_response_completes() -> None:
    p = make(TYPE)
    assert _loads(p) == {"a": InFlightLoad(0, 0), "b": InFlightLoad(0, 0)}
    r1, r2 = _request(100), _request(40, "r2")
    _send(p, r1, A, B)  # decode on a, prefill on b
    _send(p, r2, A)
    assert _loads(p) == {"a": InFlightLoad(2, 140), "b": InFlightLoad(1, 100)}
    p.response_complete(r1, ResponseInfo(status=200), A)
    p.response_complete(r1, ResponseInfo(status=200), A)  # a second call changes nothing
    assert _loads(p) == {"a": InFlightLoad(1, 40), "b": InFlightLoad(0, 0)}
    p.endpoints_removed(["a"])
    assert _loads(p)["a"] == InFlightLoad(0, 0)


def test_cached_prefix_is_discounted_and_output_estimated() -> None:
    p = make(TYPE, {"addEstimatedOutputTokens": True, "maxEstimatedOutputTokens": 500})
    req = _request(1000, max_tokens=300)
    data.put(req, DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
             {"a": PrefixCacheMatchInfo(10, 15, 64, 10)})  # fmt: skip
    # uncached: (15 - 10) * 64 indexed + (1000 - 960) tail = 360; output min(1500, 300, 500)
    assert p.request_tokens(req, "a") == 360 + 300
    assert p.request_tokens(req, "b") == 1000 + 300
    assert make(TYPE).consumes() == (DataKey(data.TOKENIZED_PROMPT, "token-producer"),)


def test_publishes_the_requests_uncached_tokens_after_the_prefix_producer() -> None:
    """llm-d-router's UncachedRequestTokens, for token-load-scorer; the prefix producer is an
    optional input, so it runs first even when configured after this one."""
    from kvgate.scheduling.scheduler import order_producers

    p = make(TYPE)
    prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer")
    assert p.may_consume() == (prefix_key,)
    prefix = make("approx-prefix-cache-producer")
    assert [q.name for q in order_producers([p, prefix])] == [prefix.name, TYPE]
    req = _request(1000)
    data.put(req, prefix_key, {"a": PrefixCacheMatchInfo(10, 15, 64, 10)})
    p.produce(CycleState(), req, [A, B])
    uncached = data.per_endpoint(req, DataKey(data.UNCACHED_REQUEST_TOKENS, TYPE), int)
    assert uncached == {"a": 360, "b": 1000}
