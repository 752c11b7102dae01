"""The gateway's I/O-free pieces: header filtering, auth, attempt order (usage and error
shapes are tests/openai/'s)."""

from __future__ import annotations

import pytest

from kvgate.gateway.auth import ApiKeyChecker, load_api_keys
from kvgate.gateway.proxy import downstream_headers, upstream_headers
from kvgate.requestcontrol.control import attempt_order
from kvgate.scheduling.types import Endpoint, ProfileRunResult, SchedulingResult, ScoredEndpoint


def test_headers_filtered_both_ways() -> None:
    up = upstream_headers(
        [
            ("Host", "gw"),
            ("Content-Length", "3"),
            ("Authorization", "Bearer k"),
            ("X-Gateway-Destination-Endpoint", "10.0.0.1:1"),
            ("x-prefiller-host-port", "10.0.0.2:1"),
            ("Connection", "keep-alive"),
            ("X-Custom", "1"),
        ],
        {"x-request-id": "r1"},
        drop_authorization=True,
    )
    assert up == {"x-custom": "1", "x-request-id": "r1"}
    kept = upstream_headers([("Authorization", "Bearer k")], {}, drop_authorization=False)
    assert kept == {"authorization": "Bearer k"}
    down = downstream_headers(
        [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"), ("Server", "x")]
    )
    assert down == {"Content-Type": "text/event-stream"}


def test_api_keys(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "keys"
    f.write_text("# comment\nk-file\n\n")
    monkeypatch.setenv("KVGATE_API_KEYS", "k-env1, k-env2")
    keys = load_api_keys(["k-flag"], f)
    assert keys == {"k-flag", "k-env1", "k-env2", "k-file"}
    checker = ApiKeyChecker(keys)
    assert checker.check("Bearer k-file")
    assert checker.check("bearer k-env2")
    assert not checker.check("Bearer nope")
    assert not checker.check("Basic k-file")
    assert not checker.check(None)
    assert ApiKeyChecker(frozenset()).check(None)


def test_attempt_order_is_pick_then_best_scores() -> None:
    a, b, c = (Endpoint(n, "127.0.0.1", p) for n, p in (("a", 1), ("b", 2), ("c", 3)))
    scored = (ScoredEndpoint(a, 0.1), ScoredEndpoint(b, 0.9), ScoredEndpoint(c, 0.5))
    result = SchedulingResult({"default": ProfileRunResult((a,), scored)}, "default")
    assert [e.name for e in attempt_order(result)] == ["a", "b", "c"]
