"""``endpoint-notification-source`` (llm-d): tell extractors when endpoints come and go.

* Parameters: none.
* Acts through kvgate's endpoint pool: the extractors wired to it must be endpoint listeners
  (``endpoints_removed``), and the pool's removals reach them (the precise prefix-cache
  scorer drops a removed endpoint's blocks, as llm-d's EndpointExtractor does).
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind

TYPE = "endpoint-notification-source"


class EndpointNotificationSource:
    """Marks which endpoint listeners llm-d's config wires to endpoint lifecycle events."""

    type_name = TYPE
    source_kind: SourceKind = "endpoint-notifications"

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> EndpointNotificationSource:
    return EndpointNotificationSource(name)
