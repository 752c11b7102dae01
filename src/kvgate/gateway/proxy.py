"""Header hygiene for the forwarding path (no I/O): what goes upstream and what comes back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kvgate.scheduling.types import ROUTING_HEADERS

#: Never forwarded in either direction (RFC 9110 §7.6.1) or recomputed by the HTTP stack.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def upstream_headers(
    client_headers: Iterable[tuple[str, str]],
    extra: Mapping[str, str],
    *,
    drop_authorization: bool,
) -> dict[str, str]:
    """Headers for the model server: the client's minus hop-by-hop and routing ones, plus
    the scheduler's (``extra`` wins)."""
    out: dict[str, str] = {}
    for name, value in client_headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in ROUTING_HEADERS:
            continue
        if drop_authorization and lower == "authorization":
            continue
        out[lower] = value
    out.update(extra)
    return out


def downstream_headers(upstream: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers of the model server's response that go back to the client."""
    out: dict[str, str] = {}
    for name, value in upstream:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in ROUTING_HEADERS or lower in ("server", "date"):
            continue
        out[name] = value
    return out
