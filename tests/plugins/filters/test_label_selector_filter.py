from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.filters.label_selector_filter import Requirement, parse_selector
from kvgate.scheduling.types import CycleState
from plugins.kit import endpoint, make, request

EPS = [
    endpoint("a", {"zone": "x", "tier": "gold"}),
    endpoint("b", {"zone": "y", "tier": "silver"}),
    endpoint("c", {"zone": "x"}),
]


def _names(params: dict[str, object]) -> list[str]:
    plugin = make("label-selector-filter", params)
    return [e.name for e in plugin.filter(CycleState(), request(), EPS)]


def test_match_labels() -> None:
    assert _names({"matchLabels": {"zone": "x"}}) == ["a", "c"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ({"key": "tier", "operator": "In", "values": ["gold", "silver"]}, ["a", "b"]),
        ({"key": "tier", "operator": "NotIn", "values": ["gold"]}, ["b", "c"]),
        ({"key": "tier", "operator": "Exists"}, ["a", "b"]),
        ({"key": "tier", "operator": "DoesNotExist"}, ["c"]),
    ],
)
def test_match_expressions(expr: dict[str, object], expected: list[str]) -> None:
    assert _names({"matchExpressions": [expr]}) == expected


def test_requirements_are_anded_and_empty_selector_keeps_all() -> None:
    both = {
        "matchLabels": {"zone": "x"},
        "matchExpressions": [{"key": "tier", "operator": "Exists"}],
    }
    assert _names(both) == ["a"]
    assert _names({}) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"matchLabels": {"zone": 3}}, "matchLabels.zone"),
        (
            {"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["v"]}]},
            "matchExpressions[0].operator",
        ),
        ({"matchExpressions": [{"key": "k", "operator": "In"}]}, "matchExpressions[0].values"),
        (
            {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]},
            "matchExpressions[0].values",
        ),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key"),
        (
            {"matchExpressions": [{"key": "k", "operator": "Exists", "value": 1}]},
            "matchExpressions[0].value",
        ),
        ({"matchExpression": []}, "matchExpression"),
    ],
)
def test_bad_selectors_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("label-selector-filter", params)
    assert err.value.field == field


def test_selector_strings_parse_as_kubernetes_reads_them() -> None:
    got = parse_selector(
        "app=vllm, tier==gpu,zone!=a, role in (prefill, decode),x notin (y),ok,!gone"
    )
    assert got == [
        Requirement("app", "In", frozenset({"vllm"})),
        Requirement("tier", "In", frozenset({"gpu"})),
        Requirement("zone", "NotIn", frozenset({"a"})),
        Requirement("role", "In", frozenset({"prefill", "decode"})),
        Requirement("x", "NotIn", frozenset({"y"})),
        Requirement("ok", "Exists", frozenset()),
        Requirement("gone", "DoesNotExist", frozenset()),
    ]
    assert parse_selector("disaggregatedset.x-k8s.io/name=my-set")[0].key == (
        "disaggregatedset.x-k8s.io/name"
    )
    for bad in ("a>1", "", "a in x", "=b"):
        with pytest.raises(ValueError, match="cannot read"):
            parse_selector(bad)
