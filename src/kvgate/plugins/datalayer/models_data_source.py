"""``models-data-source`` (llm-d-router): poll each endpoint's ``/v1/models``.

* Parameters (llm-d's names and defaults): ``scheme`` = ``"http"`` (or ``"https"``), ``path``
  = ``"/v1/models"``, ``insecureSkipVerify`` = true, ``caCertPath``, ``clientCertPath`` /
  ``clientKeyPath`` (set both, for mTLS), ``interval`` (a Go duration; default: every refresh
  tick, kvgate's ``--refresh-metrics-interval``). Unlike ``metrics-data-source`` it has no
  ``port``: the endpoint's serving port is used.
* Acts through kvgate's scraper: :func:`kvgate.config.datalayer.data_layer` turns these into
  the scraper's ``models_*`` settings, so the listing is read from this path, scheme and TLS,
  this often. Without a declared source kvgate still polls ``/v1/models`` every 5 s over
  the endpoint's own scheme (its model narrowing and ``GET /v1/models`` need the listing).
* Its extractor is ``models-data-extractor`` (kvgate.plugins.datalayer.models_data_extractor).
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind
from kvgate.plugins.datalayer.metrics_data_source import (
    MetricsSourceSettings,
    http_source_settings,
)

TYPE = "models-data-source"
DEFAULT_PATH = "/v1/models"


class ModelsDataSource:
    """Holds the polling settings; the scraper does the polling."""

    type_name = TYPE
    source_kind: SourceKind = "models"

    def __init__(self, name: str, settings: MetricsSourceSettings) -> None:
        self.name = name
        self.settings = settings


def create(name: str, params: Params, ctx: PluginContext) -> ModelsDataSource:
    return ModelsDataSource(name, http_source_settings(params, DEFAULT_PATH, with_port=False))
