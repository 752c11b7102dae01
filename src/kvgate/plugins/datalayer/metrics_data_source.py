"""``metrics-data-source`` (llm-d): poll each endpoint's Prometheus page.

* Parameters (llm-d's names and defaults): ``scheme`` = ``"http"`` (or ``"https"``), ``path`` =
  ``"/metrics"``, ``port`` (default: the endpoint's own port), ``insecureSkipVerify`` = true,
  ``caCertPath``, ``clientCertPath`` / ``clientKeyPath`` (set both, for mTLS), ``interval``
  (a Go duration; default: every refresh tick, kvgate's ``--refresh-metrics-interval``).
* Acts through kvgate's scraper: :func:`kvgate.config.datalayer.data_layer` copies these
  settings into :class:`~kvgate.config.datalayer.MetricsSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvgate.durations import parse_duration
from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.datalayer.base import SourceKind

TYPE = "metrics-data-source"


@dataclass(frozen=True, slots=True)
class MetricsSourceSettings:
    """What one ``metrics-data-source`` was configured with, defaults applied."""

    scheme: str = "http"
    path: str = "/metrics"
    port: int | None = None  # None: the endpoint's serving port
    insecure_skip_verify: bool = True
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    interval_s: float | None = None  # None: every refresh tick


class MetricsDataSource:
    """Holds the scrape settings; the scraper does the polling."""

    type_name = TYPE
    source_kind: SourceKind = "metrics"

    def __init__(self, name: str, settings: MetricsSourceSettings) -> None:
        self.name = name
        self.settings = settings


def http_source_settings(
    params: Params, default_path: str, *, with_port: bool
) -> MetricsSourceSettings:
    """The settings llm-d's HTTP data sources share (scheme, path, TLS, interval), defaults
    applied; ``port`` only where the source has one (``metrics-data-source``)."""
    scheme = params.get_str("scheme", "http")
    if scheme not in ("http", "https"):
        raise PluginParameterError("scheme", f"expected 'http' or 'https', got {scheme!r}")
    path = params.get_str("path", default_path)
    if not path.startswith("/"):
        raise PluginParameterError("path", f"expected a URL path starting with '/', got {path!r}")
    port: int | None = None
    if with_port and params.has("port"):
        port = params.get_int("port", 0, minimum=1)
        if port > 65535:
            raise PluginParameterError("port", f"expected a port 1-65535, got {port}")
    cert = params.get_str("clientCertPath", "") or None
    key = params.get_str("clientKeyPath", "") or None
    if (cert is None) != (key is None):
        raise PluginParameterError(
            "clientCertPath" if cert is None else "clientKeyPath",
            "set clientCertPath and clientKeyPath together (mTLS needs both)",
        )
    ca = params.get_str("caCertPath", "") or None
    for field, file in (("caCertPath", ca), ("clientCertPath", cert), ("clientKeyPath", key)):
        if file is not None and not Path(file).is_file():
            raise PluginParameterError(field, f"file not found: {file}")
    interval_s: float | None = None
    interval = params.get_str("interval", "")
    if interval:
        interval_s = parse_duration(interval)
        if interval_s is None or interval_s <= 0:
            raise PluginParameterError(
                "interval", f"expected a positive duration such as '1s', got {interval!r}"
            )
    return MetricsSourceSettings(
        scheme=scheme,
        path=path,
        port=port,
        insecure_skip_verify=params.get_bool("insecureSkipVerify", True),
        ca_cert_path=ca,
        client_cert_path=cert,
        client_key_path=key,
        interval_s=interval_s,
    )


def create(name: str, params: Params, ctx: PluginContext) -> MetricsDataSource:
    return MetricsDataSource(name, http_source_settings(params, "/metrics", with_port=True))
