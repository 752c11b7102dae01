"""OpenAI's error shape for every front door: JSON bodies, the SSE error event, and the
answers for requests that got no endpoint (flow control's included)."""

from __future__ import annotations

import json

import pytest

from kvgate.errors import BadRequestError, FlowRejected, NoCandidatesError, SchedulingFailedError
from kvgate.openai.errors import (
    error_body,
    request_error_body,
    scheduling_error_reply,
    sse_error_event,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
        (418, "invalid_request_error"),
    ],
)
def test_error_body_type_follows_the_status(status: int, kind: str) -> None:
    err = json.loads(error_body("boom", status=status))["error"]
    assert err == {"message": "boom", "type": kind, "param": None, "code": status}


def test_request_error_body_keeps_param_and_code() -> None:
    exc = BadRequestError("'model' is required", param="model")
    err = json.loads(request_error_body(exc))["error"]
    assert (err["message"], err["param"], err["type"]) == (
        "'model' is required",
        "model",
        "invalid_request_error",
    )


def test_sse_error_event_is_openai_shaped_then_done() -> None:
    event = sse_error_event("boom", status=502)
    first, second = event.split(b"\n\n")[:2]
    assert json.loads(first[len(b"data: ") :])["error"]["message"] == "boom"
    assert second == b"data: [DONE]"


def test_flow_control_answers_carry_retry_after_and_the_dropped_reason() -> None:
    shed = FlowRejected(
        "shed",
        "system saturated, sheddable request dropped",
        status=429,
        code="rate_limit_exceeded",
        dropped_reason="rejected-saturated",
        retry_after_s=1.0,
    )
    status, headers, raw = scheduling_error_reply(shed, retry_after_s=7)
    assert status == 429  # a 429 keeps its own hint; only 503s take the front door's
    assert headers == {"Retry-After": "1", "x-llm-d-request-dropped-reason": "rejected-saturated"}
    err = json.loads(raw)["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert err["message"] == "system saturated, sheddable request dropped"


def test_no_endpoint_answers() -> None:
    status, headers, raw = scheduling_error_reply(NoCandidatesError("none healthy"), 2.5)
    assert (status, headers["Retry-After"]) == (503, "3")
    assert "x-llm-d-request-dropped-reason" not in headers
    assert json.loads(raw)["error"]["type"] == "server_error"
    status, _, raw = scheduling_error_reply(SchedulingFailedError("every endpoint filtered"))
    assert status == 429
    assert json.loads(raw)["error"]["message"].startswith("scheduling failed: ")
