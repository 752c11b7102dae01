"""``header-based-testing-filter``: keep only the endpoints a request header names.

* Behaviour (llm-d-router's, GIE's conformance filter): the ``test-epp-endpoint-selection``
  header holds a comma-separated list of ``IP`` or ``IP:port`` (IPv6 bracketed or bare). An
  ``IP:port`` item keeps the endpoint at exactly that address and port; a bare ``IP`` keeps
  the endpoint at that address (the last listed when several share it). Items are kept in
  header order, one endpoint per address. No header, a blank one or no match keeps nothing,
  so the profile fails.
* Parameters: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "header-based-testing-filter"

#: The request header that names the endpoints (GIE conformance's constant).
HEADER = "test-epp-endpoint-selection"


def _split(item: str) -> tuple[str, str]:
    """``(host, port)`` of ``IP``, ``IP:port``, ``[v6]`` or ``[v6]:port`` (port "" if none)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host, port
    return item, ""  # bare IPv4 or unbracketed IPv6


class HeaderBasedTestingFilter:
    """See the module docstring."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        value = request.headers.get(HEADER, "").strip()
        if not value:
            return []
        by_address: dict[str, Endpoint] = {}
        by_hostport: dict[str, Endpoint] = {}
        for e in endpoints:
            address = e.address.strip("[]")
            by_address[address] = e
            by_hostport[f"{address}:{e.port}"] = e
        kept: list[Endpoint] = []
        seen: set[str] = set()
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            host, port = _split(item)
            chosen = by_hostport.get(f"{host}:{port}") if port else by_address.get(host)
            if chosen is not None and chosen.address not in seen:
                seen.add(chosen.address)
                kept.append(chosen)
        return kept


def create(name: str, params: Params, ctx: PluginContext) -> HeaderBasedTestingFilter:
    return HeaderBasedTestingFilter(name)
