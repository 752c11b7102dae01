"""request-attribute-reporter: CEL over the response's usage becomes Envoy dynamic metadata."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.errors import PluginParameterError
from kvgate.scheduling.types import ResponseInfo
from plugins.kit import endpoint, make, request

COST = "x-gateway-inference-request-cost"


def _params(expression: str, condition: str = "", **key: str) -> dict[str, Any]:
    attribute: dict[str, Any] = {"key": {"name": COST, **key}, "expression": expression}
    if condition:
        attribute["condition"] = condition
    return {"attributes": [attribute]}


def _report(params: dict[str, Any], **usage: Any) -> dict[str, dict[str, float]] | None:
    plugin = make("request-attribute-reporter", params)
    info = ResponseInfo(status=200, **usage)
    plugin.response_complete(request(), info, endpoint("a"))
    return info.metadata


def test_usage_expression_reported_under_llm_d_default_namespace() -> None:
    params = _params("usage.prompt_tokens + usage.completion_tokens")
    assert _report(params, prompt_tokens=7, completion_tokens=5) == {"envoy.lb": {COST: 12.0}}
    # total_tokens and the cached count are there as llm-d's Usage struct marshals them
    params = _params("usage.total_tokens - usage.prompt_tokens_details.cached_tokens")
    got = _report(params, prompt_tokens=7, completion_tokens=5, cached_tokens=4)
    assert got == {"envoy.lb": {COST: 8.0}}
    # a namespace of its own; a fraction is truncated, as llm-d's int64(double)
    got = _report(
        _params("usage.completion_tokens / 2.0", namespace="billing"), completion_tokens=5
    )
    assert got == {"billing": {COST: 2.0}}


def test_condition_zero_and_evaluation_errors_report_nothing() -> None:
    # the condition must be exactly true
    params = _params("usage.completion_tokens", "usage.completion_tokens > 10.0")
    assert _report(params, prompt_tokens=1, completion_tokens=5) is None
    assert _report(params, prompt_tokens=1, completion_tokens=11) == {"envoy.lb": {COST: 11.0}}
    # a zero value is skipped (no usage at all reads as zeros, as llm-d's empty struct)
    assert _report(_params("usage.completion_tokens")) is None
    # no cached count reported: the field is absent, the evaluation fails, nothing is reported
    assert _report(_params("usage.prompt_tokens_details.cached_tokens"), prompt_tokens=3) is None
    # numbers are doubles, as protobuf's Struct makes them: double + int is a CEL error
    assert _report(_params("usage.prompt_tokens + 1"), prompt_tokens=3) is None
    # a non-number result is not reported
    assert _report(_params("usage.prompt_tokens > 1.0"), prompt_tokens=3) is None


def test_a_request_that_never_got_an_answer_reports_nothing() -> None:
    plugin = make("request-attribute-reporter", _params("1"))
    info = ResponseInfo(status=0, error="connect")
    plugin.response_complete(request(), info, endpoint("a"))
    assert info.metadata is None


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({}, "attributes", "exactly one"),
        ({"attributes": [{"expression": "1"}] * 2}, "attributes", "exactly one"),
        ({"attributes": [{"key": {}, "expression": "1"}]}, "attributes[0].key.name", "required"),
        ({"attributes": [{"key": {"name": "k"}}]}, "attributes[0].expression", "required"),
        (_params("usage.("), "attributes[0].expression", "not a valid CEL expression"),
        (_params("1", "has(("), "attributes[0].condition", "not a valid CEL expression"),
        (
            {"attributes": [{"key": {"name": "k", "ns": "x"}, "expression": "1"}]},
            "attributes[0].key.ns",
            "unknown parameter",
        ),
    ],
)
def test_parameters_are_checked(params: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PluginParameterError, match=message) as info:
        make("request-attribute-reporter", params)
    assert info.value.field == field
