"""``models-data-extractor`` (llm-d-router): record each endpoint's ``/v1/models`` listing.

* Parameters: none.
* Reads what ``models-data-source`` fetches. llm-d stores the ``data`` entries (``id``,
  ``parent``) as an endpoint attribute; kvgate's scraper keeps them per endpoint
  (:meth:`kvgate.endpoints.scrape.Scraper.models_of`), where ``kvgate serve`` narrows a
  request's candidates to the endpoints serving its model and answers ``GET /v1/models``.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind

TYPE = "models-data-extractor"


class ModelsDataExtractor:
    """Marks the listing as recorded; the scraper stores it."""

    type_name = TYPE
    input_kind: SourceKind = "models"

    def __init__(self, name: str) -> None:
        self.name = name


def create(name: str, params: Params, ctx: PluginContext) -> ModelsDataExtractor:
    return ModelsDataExtractor(name)
