"""p2p-source-producer: the best-cached peer becomes the KV source when it out-caches the pick."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.producers.p2p_source_producer import HEADER_KV_CACHE_SOURCE, spread_fraction
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from plugins.kit import endpoint, make, request

TYPE = "p2p-source-producer"
KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer")
A, B, C = (endpoint(n, waiting_queue_size=w) for n, w in (("a", 0), ("b", 0), ("c", 3)))


def _req(blocks: dict[str, int], request_id: str = "r1") -> Request:
    req = request(request_id=request_id)
    data.put(req, KEY, {n: PrefixCacheMatchInfo(b, 10, 16, b) for n, b in blocks.items()})
    return req


def _header(plugin: object, req: Request, *targets: tuple[str, Endpoint]) -> str | None:
    plugin.produce(CycleState(), req, [A, B, C])  # type: ignore[attr-defined]
    result = SchedulingResult({p: ProfileRunResult((e,)) for p, e in targets}, targets[0][0])
    headers: dict[str, str] = {}
    plugin.pre_request(req, result, headers)  # type: ignore[attr-defined]
    return headers.get(HEADER_KV_CACHE_SOURCE)


def test_the_peer_that_out_caches_the_computing_endpoint_is_named() -> None:
    p = make(TYPE, {"minCachedTokenDelta": 32})
    # a holds 8 blocks (128 tokens), b 2: computing on b, a out-caches it by 96 >= 32
    assert _header(p, _req({"a": 8, "b": 2}), ("default", B)) == A.hostport
    assert _header(p, _req({"a": 8, "b": 7}), ("default", B)) is None  # 16 < 32
    assert _header(p, _req({"a": 8}), ("default", A)) is None  # the peer computes itself
    assert _header(p, _req({}), ("default", B)) is None  # nothing cached anywhere


def test_the_prefill_target_is_the_computing_endpoint_in_p_d() -> None:
    p = make(TYPE)
    req = _req({"a": 8, "b": 8})
    hdr = _header(p, req, ("decode", C), ("prefill", A))
    assert hdr in (None, B.hostport)  # a computes: only b may be named, never a


def test_peers_within_one_block_are_drawn_by_request_id_weighted_by_queue() -> None:
    p = make(TYPE)
    drawn: dict[str, int] = {}
    for i in range(200):
        req = _req({"a": 8, "b": 8, "c": 7}, request_id=f"{i:08x}-request")  # c: one block less
        p.produce(CycleState(), req, [A, B, C])
        peer = req.extra[f"{TYPE}/{TYPE}"].hostport
        drawn[peer] = drawn.get(peer, 0) + 1
    # weights 1 : 1 : 1/4 (c has 3 waiting): c is drawn, and least
    assert set(drawn) == {A.hostport, B.hostport, C.hostport}
    assert drawn[C.hostport] < min(drawn[A.hostport], drawn[B.hostport])
    req = _req({"a": 8, "c": 6})  # c is two blocks behind: out of the band
    p.produce(CycleState(), req, [A, B, C])
    assert req.extra[f"{TYPE}/{TYPE}"].hostport == A.hostport
    assert spread_fraction("req-1") == spread_fraction("req-1") != spread_fraction("req-2")
    assert 0.0 <= spread_fraction("") < 1.0


def test_min_cached_token_delta_must_be_positive() -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"minCachedTokenDelta": 0})
    assert err.value.field == "minCachedTokenDelta"
