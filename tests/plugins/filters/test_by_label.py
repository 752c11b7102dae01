from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import ROLE_LABEL, CycleState
from plugins.kit import endpoint, make, request

EPS = [
    endpoint("gpu-a", {"hw": "a100"}),
    endpoint("gpu-h", {"hw": "h100"}),
    endpoint("plain"),
]


def _names(plugin: object) -> list[str]:
    return [e.name for e in plugin.filter(CycleState(), request(), EPS)]  # type: ignore[attr-defined]


def test_valid_values() -> None:
    assert _names(make("by-label", {"label": "hw", "validValues": ["h100"]})) == ["gpu-h"]


def test_allows_no_label() -> None:
    plugin = make("by-label", {"label": "hw", "validValues": ["a100"], "allowsNoLabel": True})
    assert _names(plugin) == ["gpu-a", "plain"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"validValues": ["x"]}, "label"),
        ({"label": "hw"}, "validValues"),
        ({"label": "hw", "validValues": "x"}, "validValues"),
        ({"label": "hw", "validValues": ["x"], "allowsNoLabel": "yes"}, "allowsNoLabel"),
        ({"label": "hw", "validValues": ["x"], "valid": 1}, "valid"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(PluginParameterError) as err:
        make("by-label", params)
    assert err.value.field == field


def test_decode_and_prefill_filters() -> None:
    """llm-d-router's role sets: a prefill-decode (or ``both``) server serves either leg."""
    roles = ("decode", "both", "prefill", "prefill-decode", "encode", "encode-prefill",
             "encode-prefill-decode")  # fmt: skip
    eps = [endpoint(r, {ROLE_LABEL: r}) for r in roles] + [endpoint("unlabelled")]
    decode = make("decode-filter").filter(CycleState(), request(), eps)
    prefill = make("prefill-filter").filter(CycleState(), request(), eps)
    assert [e.name for e in decode] == [
        "decode", "both", "prefill-decode", "encode-prefill-decode", "unlabelled"
    ]  # fmt: skip
    assert [e.name for e in prefill] == [
        "both", "prefill", "prefill-decode", "encode-prefill", "encode-prefill-decode"
    ]  # fmt: skip
