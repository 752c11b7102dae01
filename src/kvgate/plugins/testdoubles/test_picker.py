"""``test-picker`` (llm-d's config-loader test double): a picker that picks nothing.

* Parameters: none.
* Rule: no target, whatever the scores (llm-d's double returns no result), so a profile
  that uses it finds no endpoint and the cycle fails (429, as any empty primary profile).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.testdoubles import STRICT_NOTES
from kvgate.scheduling.types import CycleState, ProfileRunResult, Request, ScoredEndpoint

TYPE = "test-picker"


class NullPicker:
    """Picks no endpoint."""

    type_name = TYPE
    strict_notes = STRICT_NOTES

    def __init__(self, name: str) -> None:
        self.name = name

    def pick(
        self, state: CycleState, request: Request, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        return ProfileRunResult(())


def create(name: str, params: Params, ctx: PluginContext) -> NullPicker:
    return NullPicker(name)
