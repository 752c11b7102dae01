"""latency-scorer: tiers by SLO, idle preference, deficit groups, strategies, fallback."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.latency import LATENCY_PREDICTION_INFO, EndpointLoad, LatencyPredictionInfo
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import Request
from plugins.kit import endpoint, make, request, score

TYPE = "latency-scorer"
KEY = DataKey(LATENCY_PREDICTION_INFO, "predicted-latency-producer")
EPS = [endpoint("a"), endpoint("b"), endpoint("c")]
LOAD = EndpointLoad(0, 0, 0, 0, 0, 0, 0.0)
SLO = {"x-slo-ttft-ms": "200", "x-slo-tpot-ms": "50"}


def _info(
    ttft: float, tpot: float, slo: tuple[float, float] = (200, 50), busy: int = 1
) -> LatencyPredictionInfo:
    t_slo, p_slo = slo
    return LatencyPredictionInfo(ttft, tpot, t_slo - ttft, p_slo - tpot,
                                 t_slo <= 0 or ttft < t_slo, p_slo <= 0 or tpot < p_slo,
                                 busy, LOAD)  # fmt: skip


def _req(infos: dict[str, LatencyPredictionInfo], headers: dict[str, str] | None = None) -> Request:
    req = request(headers=headers)
    data.put(req, KEY, infos)
    return req


def test_only_endpoints_meeting_the_slo_are_scored_least_headroom_first() -> None:
    req = _req({"a": _info(100, 20), "b": _info(190, 45), "c": _info(400, 20)}, SLO)
    s = score(make(TYPE), EPS, req)
    assert s["c"] == 0.0  # misses the TTFT SLO
    assert s["b"] > s["a"] > 0.0  # least: closest to its SLO packs tighter
    most = score(make(TYPE, {"headroomSelectionStrategy": "most"}), EPS, req)
    assert most["a"] > most["b"] > 0.0 and most["c"] == 0.0


def test_without_slo_the_lowest_predicted_latency_wins_and_idle_ones_first() -> None:
    busy = {"a": _info(300, 30, (0, 0)), "b": _info(100, 10, (0, 0)), "c": _info(200, 20, (0, 0))}
    s = score(make(TYPE), EPS, _req(busy))
    assert s["b"] == 1.0 and s["b"] > s["c"] > s["a"] > 0.0
    busy["a"] = _info(300, 30, (0, 0), busy=0)  # idle: preferred however slow it looks
    s = score(make(TYPE), EPS, _req(busy))
    assert s["a"] > 0.0 and s["b"] == s["c"] == 0.0


def test_when_nobody_meets_the_slo_the_least_severe_group_is_scored() -> None:
    req = _req({"a": _info(300, 60), "b": _info(300, 20), "c": _info(100, 90)}, SLO)
    s = score(make(TYPE), EPS, req)
    assert s["c"] > 0.0 and s["a"] == s["b"] == 0.0  # TPOT missed only beats TTFT missed


def test_composite_fallback_while_nothing_is_predicted() -> None:
    eps = [endpoint("a", kv_cache_usage_percent=0.9, waiting_queue_size=4),
           endpoint("b", kv_cache_usage_percent=0.1, waiting_queue_size=0)]  # fmt: skip
    req = request()
    data.put(req, DataKey(data.PREFIX_CACHE_MATCH_INFO, "approx-prefix-cache-producer"),
             {"a": PrefixCacheMatchInfo(8, 10, 16, 8)})  # fmt: skip
    s = score(make(TYPE), eps, req)
    assert s["a"] == round((0.1 + 0.0 + 0.8) / 3, 2) == 0.3  # llm-d's weight out of 100
    assert s["b"] == round((0.9 + 1.0 + 0.0) / 3, 2) == 0.63


def test_bad_strategy_names_the_field() -> None:
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"headroomSelectionStrategy": "best"})
    assert err.value.field == "headroomSelectionStrategy"


def test_scores_are_llm_d_integer_weights_out_of_100() -> None:
    """``(int(100·x) + 1) / 100`` (Go truncation), capped at 1: least-headroom first."""
    infos = {"a": _info(100, 10, (0, 0)), "b": _info(133, 10, (0, 0)), "c": _info(200, 10, (0, 0))}
    s = score(make(TYPE, {"ttftWeight": 1, "tpotWeight": 0}), EPS, _req(infos))
    # |headroom| 100, 133, 200 → normalised 0, 0.33, 1 → x = 1, 0.67, 0
    assert s == {"a": 1.0, "b": 0.68, "c": 0.01}
