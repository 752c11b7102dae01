"""``test-one`` (llm-d's config-loader test double): a filter that keeps every endpoint.

* Parameters: ``threshold`` (an integer; llm-d's double decodes it and never reads it, and
  kvgate keeps it on the plugin for the same reason: only its type is checked).
* Rule: the candidates pass unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.testdoubles import STRICT_NOTES
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "test-one"


class KeepAllFilter:
    """Returns the endpoints it is given."""

    type_name = TYPE
    strict_notes = STRICT_NOTES

    def __init__(self, name: str, threshold: int) -> None:
        self.name = name
        self.threshold = threshold

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        return list(endpoints)


def create(name: str, params: Params, ctx: PluginContext) -> KeepAllFilter:
    return KeepAllFilter(name, params.get_int("threshold", 0))
