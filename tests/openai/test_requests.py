"""OpenAI request parsing: path -> kind, header hygiene, body -> the scheduler's Request."""

from __future__ import annotations

import pytest

from kvgate.errors import BadRequestError
from kvgate.openai.requests import (
    build_request,
    parse_body,
    request_kind_for_path,
    strip_routing_headers,
)


def test_kind_from_path() -> None:
    assert request_kind_for_path("/v1/chat/completions") == "chat"
    assert request_kind_for_path("/ns/svc/v1/chat/completions/") == "chat"
    assert request_kind_for_path("/v1/completions") == "completions"
    assert request_kind_for_path("/v1/models") is None


def test_routing_headers_from_clients_are_dropped_and_names_lowered() -> None:
    clean = strip_routing_headers(
        {
            "X-Gateway-Destination-Endpoint": "10.0.0.1:1",
            "x-gateway-destination-endpoint-subset": "10.0.0.1:1",
            "X-Request-Id": "r1",
            "X-Gateway-Inference-Fairness-Id": "t",
        }
    )
    assert clean == {"x-request-id": "r1", "x-gateway-inference-fairness-id": "t"}


def test_parse_body_rejects_what_is_not_a_json_object() -> None:
    assert parse_body(b'{"model": "m"}') == {"model": "m"}
    for raw in (b"", b"nope", b"[]", b'"s"', b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(BadRequestError):
            parse_body(raw)


def test_build_request_reads_what_the_scheduler_needs() -> None:
    chat = build_request(
        "chat",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "cache_salt": "s",
            "priority": 3,
        },
        {"x-request-id": "rid"},
        body_size=42,
    )
    assert (chat.request_id, chat.model, chat.kind, chat.cache_salt, chat.priority) == (
        "rid",
        "m",
        "chat",
        "s",
        3,
    )
    assert chat.body_size == 42 and chat.prompt is None and chat.messages
    joined = build_request("completions", {"model": "m", "prompt": ["a", "b"]}, {})
    assert joined.prompt == "ab" and joined.request_id  # an id is made when none is given
    tokens = build_request("completions", {"model": "m", "prompt": [1, 2, 3]}, {})
    assert tokens.token_ids == (1, 2, 3) and tokens.prompt is None
    odd = build_request("completions", {"model": "m", "prompt": "x", "priority": True}, {})
    assert odd.priority == 0 and odd.cache_salt is None


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"messages": [{"role": "user"}]}, "model"),
        ("chat", {"model": ""}, "model"),
        ("chat", {"model": "m", "messages": []}, "messages"),
        ("chat", {"model": "m", "messages": ["hi"]}, "messages[0]"),
        ("completions", {"model": "m"}, "prompt"),
        ("completions", {"model": "m", "prompt": []}, "prompt"),
        ("completions", {"model": "m", "prompt": [1, "a"]}, "prompt"),
    ],
)
def test_build_request_errors_name_the_field(
    kind: str, body: dict[str, object], param: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        build_request(kind, body, {})  # type: ignore[arg-type]
    assert info.value.param == param and info.value.status == 400


def test_new_request_id_is_a_version_4_uuid() -> None:
    import uuid

    from kvgate.openai.requests import new_request_id

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
