"""``passthrough-parser`` (llm-d-router): requests are not parsed; bodies pass unchanged.

* Behaviour (llm-d-router's ``parsers/passthrough``): the body is kept as raw bytes and never
  read as an OpenAI request, and responses are not parsed. kvgate then schedules every
  request with no model and no prompt: candidates are not narrowed by model, prefix and
  token scorers see no tokens (they score 0), load scorers act as usual; the body goes to
  the picked endpoint byte for byte, on the path the client used. Headers still act (the
  fairness id, the objective, ``agent-identity``, the conformance filter).
* Where kvgate differs: its front doors still read a JSON response's ``usage`` when there is
  one (for metrics and the request log); llm-d reports none.
* Parameters: none. Listed under ``requestHandler.parsers`` it must be the only parser.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext

TYPE = "passthrough-parser"


class PassthroughParser:
    """Makes kvgate's front doors forward request bodies without parsing them."""

    type_name = TYPE
    parses: str = "passthrough"
    strict_notes = (
        "a JSON response's usage is still read for kvgate's metrics and request log; "
        "llm-d's passthrough parser reads no response",
    )

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> PassthroughParser:
    return PassthroughParser(name)
