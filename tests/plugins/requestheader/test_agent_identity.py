"""agent-identity: the first session header of its list becomes the request's identity."""

from __future__ import annotations

import pytest

from kvgate.config import load_picker_config
from kvgate.errors import PluginParameterError
from kvgate.plugins.requestheader import AGENT_IDENTITY
from plugins.kit import make, request


def _identity(headers: dict[str, str], params: dict[str, object] | None = None) -> object:
    plugin = make("agent-identity", params)
    req = request(headers=headers)
    plugin.request_header(req)
    return req.extra.get(AGENT_IDENTITY)


def test_built_in_headers_in_llm_d_order() -> None:
    assert _identity({"x-claude-code-session-id": "cc", "x-session-affinity": "oc"}) == "cc"
    assert _identity({"x-session-affinity": "oc", "session-id": "cx"}) == "oc"
    assert _identity({"session_id": "legacy", "session-id": "cx"}) == "cx"
    assert _identity({"session_id": "legacy"}) == "legacy"
    # an empty value is no match, and no match records nothing
    assert _identity({"x-claude-code-session-id": "", "session_id": "s"}) == "s"
    assert _identity({"x-request-id": "r"}) is None


def test_additional_headers_come_first_and_match_in_any_case() -> None:
    params = {"additionalSessionHeaders": ["X-My-Agent-Session", "x-other"]}
    headers = {"x-claude-code-session-id": "cc", "x-other": "o", "x-my-agent-session": "mine"}
    assert _identity(headers, params) == "mine"
    assert _identity({"x-claude-code-session-id": "cc", "x-other": "o"}, params) == "o"
    assert _identity({"x-claude-code-session-id": "cc"}, params) == "cc"


def test_parameters_are_checked() -> None:
    with pytest.raises(PluginParameterError, match="additionalSessionHeaders"):
        make("agent-identity", {"additionalSessionHeaders": "x-one"})


def test_config_check_names_its_role() -> None:
    text = (
        "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: agent-identity\n- type: queue-scorer\n"
    )
    config = load_picker_config(text=text)
    spec = next(p for p in config.plugins if p.type == "agent-identity")
    assert spec.roles == frozenset({"request-header"})
