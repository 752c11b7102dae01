"""``openai-parser`` (llm-d): parse OpenAI API requests and responses.

* Parameters: none.
* kvgate's front doors always parse the OpenAI API (``kvgate.openai``: ``/v1/completions``,
  ``/v1/chat/completions``, usage in JSON and SSE responses), so listing this parser under
  ``requestHandler.parsers`` (or the older top-level ``parser``) selects what kvgate does.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext

TYPE = "openai-parser"


class OpenAIParser:
    """Names kvgate's built-in OpenAI parsing in a config."""

    type_name = TYPE
    parses: str = "openai"

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> OpenAIParser:
    return OpenAIParser(name)
