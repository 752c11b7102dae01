"""disaggregatedset-rollout-screener: revision coverage and shares, one revision per request,
strict selectors, stamping, and its parameters; header-label-affinity-scorer beside it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.requestcontrol.disaggregatedset_rollout_screener import (
    DisaggregatedSetRolloutScreener,
    pick_weighted,
)
from kvgate.scheduling.types import CycleState, Endpoint
from plugins.kit import endpoint, make, request

REV = "disaggregatedset.x-k8s.io/revision"
ROLE = "disaggregatedset.x-k8s.io/role"
SLICE = "disaggregatedset.x-k8s.io/slice"


def params(mode: str = "max-role", **extra: Any) -> dict[str, Any]:
    return {
        "scope": {"labelSelector": "disaggregatedset.x-k8s.io/name=set"},
        "headerSelectors": [
            {
                "name": "revision",
                "headerName": "X-Disagg-Revision",
                "labelKey": REV,
                "mode": "strict",
            },
            {"name": "slice", "headerName": "x-disagg-slice", "labelKey": SLICE, "mode": "prefer"},
        ],
        "revisionGating": {"mode": mode, "requireRoles": {"values": ["prefill", "decode"]}},
        **extra,
    }


def pods(revision: str, prefill: int, decode: int, set_name: str = "set") -> list[Endpoint]:
    out = []
    for role, n in (("prefill", prefill), ("decode", decode)):
        for i in range(n):
            labels = {"disaggregatedset.x-k8s.io/name": set_name, REV: revision, ROLE: role}
            out.append(endpoint(f"{revision}-{role}-{i}", {**labels, SLICE: f"s{i % 2}"}))
    return out


def screener(mode: str = "max-role") -> DisaggregatedSetRolloutScreener:
    plugin = make("disaggregatedset-rollout-screener", params(mode))
    assert isinstance(plugin, DisaggregatedSetRolloutScreener)
    return plugin


def test_llm_d_readme_2p_10d_shares() -> None:
    # old revision A: 2 prefill, 9 decode; new B: 1 and 1 (the README's intermediate step)
    ready = pods("A", 2, 9) + pods("B", 1, 1) + pods("C", 0, 3) + pods("X", 5, 5, "other")
    for mode, want in (("max-role", {"A": 0.9, "B": 0.1}), ("sum", {"A": 11 / 13, "B": 2 / 13})):
        plugin = screener(mode)
        assert plugin.gating is not None
        shares = plugin.gating.shares(plugin.revision_counts(ready))
        assert shares == pytest.approx({**want, "C": 0.0})  # C has no prefill; X out of scope


def test_one_covered_revision_per_request_by_share() -> None:
    plugin = screener("sum")
    ready = pods("A", 1, 3) + pods("B", 1, 1) + pods("C", 0, 2)
    revisions: Counter[str] = Counter()
    for _ in range(400):
        kept = plugin.screen(request(), ready, ready)
        (revision,) = {e.labels[REV] for e in kept}
        assert len(kept) == (4 if revision == "A" else 2)
        revisions[revision] += 1
    assert set(revisions) == {"A", "B"} and 230 < revisions["A"] < 370  # 2/3 of 400 = 267
    assert pick_weighted({"b": 1.0, "a": 3.0}, 0.74) == "a"  # name order over one draw
    assert pick_weighted({"b": 1.0, "a": 3.0}, 0.75) == "b"
    assert pick_weighted({}, 0.5) == ""


def test_strict_header_pins_the_revision_and_fails_closed() -> None:
    plugin = screener()
    ready = pods("A", 1, 2) + pods("B", 1, 1) + pods("C", 0, 1)
    kept = plugin.screen(request(headers={"x-disagg-revision": "B"}), ready, ready)
    assert {e.name for e in kept} == {"B-prefill-0", "B-decode-0"}
    assert plugin.screen(request(headers={"x-disagg-revision": "C"}), ready, ready) == []
    # no covered revision at all: nothing (request control answers 503)
    assert plugin.screen(request(), pods("C", 0, 2), pods("C", 0, 2)) == []
    # the candidates may be narrower than the pool (model, subset hint): shares come from ready
    kept = plugin.screen(request(headers={"x-disagg-revision": "A"}), ready[:1], ready)
    assert [e.name for e in kept] == ["A-prefill-0"]


def test_disabled_gating_keeps_selectors_and_stamping() -> None:
    plugin = make("disaggregatedset-rollout-screener", params("disabled"))
    ready = pods("A", 1, 1) + pods("C", 0, 1)
    assert plugin.screen(request(), ready, ready) == ready
    assert [
        e.name for e in plugin.screen(request(headers={"x-disagg-revision": "C"}), ready, ready)
    ] == ["C-decode-0"]
    headers: dict[str, str] = {}
    plugin.response_header(request(), ready[1], headers)
    assert headers == {"x-disagg-revision": "A", "x-disagg-slice": "s0"}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"scope": {}}, "scope.labelSelector", "required"),
        ({"scope": {"labelSelector": "a>1"}}, "scope.labelSelector", "not a valid label selector"),
        ({"revisionGating": None}, "revisionGating", "required"),
        (
            {"revisionGating": {"mode": "max-role", "requiredRoles": ["p"]}},
            "revisionGating.requiredRoles",
            "unknown",
        ),
        ({"revisionGating": {"mode": "sum"}}, "revisionGating.requireRoles.values", "at least one"),
        ({"revisionGating": {"mode": "half"}}, "revisionGating.mode", "expected one of"),
        (
            {"revisionGating": {"mode": "sum", "requireRoles": {"values": ["p", "p"]}}},
            "revisionGating.requireRoles.values",
            "unique",
        ),
        (
            {
                "headerSelectors": [
                    {"name": "r", "headerName": "h", "labelKey": "k", "mode": "soft"}
                ]
            },
            "headerSelectors[0].mode",
            "strict or prefer",
        ),
        (
            {"headerSelectors": [{"name": "r", "headerName": "h", "labelKey": "k"}]},
            "headerSelectors[0].mode",
            "required",
        ),
        (
            {
                "headerSelectors": [
                    {"name": "r", "headerName": "h", "labelKey": "k", "mode": "strict"}
                ]
                * 2
            },
            "headerSelectors[1].name",
            "duplicate",
        ),
    ],
)
def test_parameters_are_checked(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PluginParameterError, match=message) as info:
        make("disaggregatedset-rollout-screener", {**params(), **change})
    assert info.value.field == field


def test_header_label_affinity_scorer() -> None:
    scorer = make(
        "header-label-affinity-scorer", {"headerName": "X-Disagg-Slice", "labelKey": SLICE}
    )
    ready = pods("A", 0, 3)
    scores = scorer.score(CycleState(), request(headers={"x-disagg-slice": "s1"}), ready)
    assert scores == {"A-decode-0": 0.0, "A-decode-1": 1.0, "A-decode-2": 0.0}
    assert set(scorer.score(CycleState(), request(), ready).values()) == {0.0}
    with pytest.raises(PluginParameterError, match="required") as info:
        make("header-label-affinity-scorer", {"headerName": "x"})
    assert info.value.field == "labelKey"
