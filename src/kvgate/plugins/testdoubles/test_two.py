"""``test-two`` (llm-d's config-loader test double): a scorer that scores nothing.

* Parameters: ``blockSize`` (an integer; llm-d's double decodes it to check its type and
  never reads it).
* Rule: returns an empty mapping, so every endpoint scores 0 (the framework's rule for
  endpoints a scorer leaves out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.testdoubles import STRICT_NOTES
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "test-two"


class ZeroScorer:
    """Scores every endpoint 0."""

    type_name = TYPE
    strict_notes = STRICT_NOTES

    def __init__(self, name: str, block_size: int) -> None:
        self.name = name
        self.block_size = block_size

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return {}


def create(name: str, params: Params, ctx: PluginContext) -> ZeroScorer:
    return ZeroScorer(name, params.get_int("blockSize", 0))
