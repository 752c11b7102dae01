"""``test-extractor`` (llm-d's config-loader test double): an extractor that extracts nothing.

* Parameters: none.
* Rule: reads ``test-source``'s output (nothing) and records nothing; wiring it to any other
  source is an error, as for every extractor whose input kind does not match.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind
from kvgate.plugins.testdoubles import STRICT_NOTES

TYPE = "test-extractor"


class NullExtractor:
    """Reads nothing, records nothing."""

    type_name = TYPE
    strict_notes = STRICT_NOTES
    input_kind: SourceKind = "nothing"

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> NullExtractor:
    return NullExtractor(name)
