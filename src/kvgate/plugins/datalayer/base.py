"""The data-layer extension points: one Protocol each for sources and extractors.

A source (``metrics-data-source``, ``endpoint-notification-source``) says what it gathers
with ``source_kind``; an extractor (``core-metrics-extractor``) says which source kind it reads
with ``input_kind``. The config loader checks that every ``dataLayer.sources[].extractors[]``
entry reads what its source produces, as llm-d checks an extractor's expected input type.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from kvgate.plugins.base import Plugin

#: What a source gathers: Prometheus metrics pages, endpoint add/remove notifications, the
#: model server's ``/v1/models`` listing, or nothing (llm-d's ``test-source`` double).
SourceKind = Literal["metrics", "endpoint-notifications", "models", "nothing"]


@runtime_checkable
class DataSource(Plugin, Protocol):
    """A data-layer source; ``source_kind`` names what it delivers to its extractors."""

    @property
    def source_kind(self) -> SourceKind: ...


@runtime_checkable
class DataExtractor(Plugin, Protocol):
    """A data-layer extractor; ``input_kind`` is the source kind it reads."""

    @property
    def input_kind(self) -> SourceKind: ...
