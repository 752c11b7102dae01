"""Endpoints given on the command line: ``--endpoint http://127.0.0.1:8001``."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from kvgate.endpoints.pool import EndpointSpec


class EndpointURLError(ValueError):
    """An endpoint URL that cannot be used; the message says what is expected."""


def spec_from_url(
    url: str, *, name: str | None = None, labels: Mapping[str, str] | None = None
) -> EndpointSpec:
    """``http[s]://host:port`` -> :class:`EndpointSpec` named ``host:port`` unless ``name``."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise EndpointURLError(f"endpoint {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise EndpointURLError(f"endpoint {url!r}: expected http[s]://host:port")
    try:
        port = parts.port
    except ValueError as exc:
        raise EndpointURLError(f"endpoint {url!r}: bad port") from exc
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if parts.path not in ("", "/", "/v1", "/v1/"):
        raise EndpointURLError(
            f"endpoint {url!r}: give the server root (http://host:port), not a path"
        )
    host = parts.hostname
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return EndpointSpec(
        name=name or hostport,
        address=host,
        port=port,
        labels=dict(labels or {}),
        scheme=parts.scheme,
    )


def specs_from_urls(urls: list[str]) -> list[EndpointSpec]:
    specs = [spec_from_url(u) for u in urls]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EndpointURLError(f"endpoint given twice: {', '.join(dupes)}")
    return specs


__all__ = ["EndpointURLError", "spec_from_url", "specs_from_urls"]
