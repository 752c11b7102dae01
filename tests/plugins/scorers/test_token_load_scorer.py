"""token-load-scorer: 1 − min(1, in-flight tokens / queueThresholdTokens)."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, InFlightLoad
from plugins.kit import endpoint, make, request, score

A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def test_formula_and_producer_name() -> None:
    s = make("token-load-scorer", {"queueThresholdTokens": 1000, "inFlightLoadProducerName": "ifl"})
    key = DataKey(data.IN_FLIGHT_LOAD, "ifl")
    assert s.consumes() == (key,)
    req = request()
    data.put(req, key, {"a": InFlightLoad(1, 250), "b": InFlightLoad(9, 4000)})
    assert score(s, [A, B, C], req) == {"a": 0.75, "b": 0.0, "c": 1.0}
    assert make("token-load-scorer").queue_threshold_tokens == 4194304
    with pytest.raises(PluginParameterError) as err:
        make("token-load-scorer", {"queueThresholdTokens": 0})
    assert err.value.field == "queueThresholdTokens"


def test_adds_the_requests_own_uncached_tokens() -> None:
    """llm-d-router (#1319): in-flight tokens plus what this request would add there."""
    s = make("token-load-scorer", {"queueThresholdTokens": 1000})
    req = request()
    data.put(req, DataKey(data.IN_FLIGHT_LOAD, "inflight-load-producer"),
             {"a": InFlightLoad(1, 250), "b": InFlightLoad(0, 0)})  # fmt: skip
    data.put(req, DataKey(data.UNCACHED_REQUEST_TOKENS, "inflight-load-producer"),
             {"a": 250, "b": 100})  # fmt: skip
    assert score(s, [A, B, C], req) == {"a": 0.5, "b": 0.9, "c": 1.0}
