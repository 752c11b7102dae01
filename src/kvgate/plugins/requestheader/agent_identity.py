"""``agent-identity`` (llm-d-router): an agent session's id becomes its flow-control fairness id.

* Behaviour (llm-d-router's ``requestheader/agentidentity``): before admission, the first
  non-empty header of an ordered list is recorded on the request as its ``agent-identity``
  attribute (``request.extra[AGENT_IDENTITY]``). Request control then takes the fairness id
  from an explicit ``x-gateway-inference-fairness-id`` / ``x-llm-d-inference-fairness-id``
  header if there is one, else from this attribute, else llm-d's ``default-flow`` - so every
  turn of one agent session waits in the same fairness queue.
* The list: ``additionalSessionHeaders`` first (in the order given), then the built-in
  ``x-claude-code-session-id`` (Claude Code), ``x-session-affinity`` (OpenCode),
  ``session-id`` and ``session_id`` (Codex, current and legacy). Names are matched
  case-insensitively (kvgate lower-cases request headers, as Envoy does).
* Parameters: ``additionalSessionHeaders`` (list of header names, default none).
* No header matched: nothing is recorded and the request goes to the default flow.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.requestheader import AGENT_IDENTITY
from kvgate.scheduling.types import Request

TYPE = "agent-identity"

#: Built-in session headers, checked after any ``additionalSessionHeaders``.
DEFAULT_SESSION_HEADERS: tuple[str, ...] = (
    "x-claude-code-session-id",
    "x-session-affinity",
    "session-id",
    "session_id",
)


class AgentIdentity:
    """See the module docstring."""

    type_name = TYPE

    def __init__(self, name: str, session_headers: tuple[str, ...]) -> None:
        self.name = name
        self.session_headers = session_headers  # lower-cased, in priority order

    def request_header(self, request: Request) -> None:
        headers = request.headers
        for header in self.session_headers:
            value = headers.get(header)
            if value:
                request.extra[AGENT_IDENTITY] = value
                return


def create(name: str, params: Params, ctx: PluginContext) -> AgentIdentity:
    extra = params.get_str_list("additionalSessionHeaders")
    headers = tuple(h.lower() for h in extra) + DEFAULT_SESSION_HEADERS
    return AgentIdentity(name, headers)
