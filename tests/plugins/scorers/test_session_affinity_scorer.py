from __future__ import annotations

import base64

from kvgate.scheduling.types import HEADER_SESSION_TOKEN, ResponseInfo
from plugins.kit import ctx, endpoint, make, request, scheduler, score

EPS = [endpoint("ns/pod-a-rank-0"), endpoint("ns/pod-b-rank-0"), endpoint("10.0.0.9:8000")]


def test_token_is_std_base64_of_the_endpoint_name() -> None:
    plugin = make("session-affinity-scorer")
    response = ResponseInfo(status=200)
    plugin.response_complete(request(), response, EPS[1])
    assert response.headers[HEADER_SESSION_TOKEN] == base64.b64encode(b"ns/pod-b-rank-0").decode()


def test_round_trip_through_the_scheduler() -> None:
    c = ctx()
    plugin = make("session-affinity-scorer", c=c)
    sched = scheduler([(plugin, 1.0)], c=c, extra=[])
    first = sched.schedule(request(), EPS)
    response = ResponseInfo(status=200)
    sched.response_complete(request(), response, first.target)
    token = response.headers[HEADER_SESSION_TOKEN]
    for _ in range(5):
        again = sched.schedule(request(headers={HEADER_SESSION_TOKEN: token}), EPS)
        assert again.target is first.target


def test_scores_one_for_the_named_endpoint_only() -> None:
    token = base64.b64encode(b"10.0.0.9:8000").decode()
    got = score(
        make("session-affinity-scorer"), EPS, request(headers={HEADER_SESSION_TOKEN: token})
    )
    assert got == {"ns/pod-a-rank-0": 0.0, "ns/pod-b-rank-0": 0.0, "10.0.0.9:8000": 1.0}


def test_invalid_or_unknown_token_scores_zero() -> None:
    plugin = make("session-affinity-scorer")
    for token in [
        "***",
        base64.b64encode(b"gone").decode(),
        base64.b64encode(b"\xff\xfe").decode(),
    ]:
        got = score(plugin, EPS, request(headers={HEADER_SESSION_TOKEN: token}))
        assert set(got.values()) == {0.0}
