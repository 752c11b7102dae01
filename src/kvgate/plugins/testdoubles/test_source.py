"""``test-source`` (llm-d's config-loader test double): a data source that gathers nothing.

* Parameters: none.
* Rule: collects nothing for any endpoint; its extractors (``test-extractor``) are wired and
  never called. The data layer's other sources (the injected ``metrics-data-source``) act
  as usual.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind
from kvgate.plugins.testdoubles import STRICT_NOTES

TYPE = "test-source"


class NullSource:
    """Declares a source of nothing."""

    type_name = TYPE
    strict_notes = STRICT_NOTES
    source_kind: SourceKind = "nothing"

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> NullSource:
    return NullSource(name)
