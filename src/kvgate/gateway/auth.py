"""API keys: ``--api-key``, the ``KVGATE_API_KEYS`` variable, ``--api-key-file``.

With no key configured the gateway is open. With keys, every inference route and
/v1/models needs ``Authorization: Bearer <key>``; /health, /ready and /metrics stay open
so probes and Prometheus work. Comparison is constant-time per key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

ENV_VAR = "KVGATE_API_KEYS"


def load_api_keys(
    keys: Iterable[str] = (), key_file: str | Path | None = None, *, env: bool = True
) -> frozenset[str]:
    """Union of explicit keys, the env var (comma or whitespace separated) and the file
    (one key per line; blank lines and ``#`` comments ignored)."""
    found = [k.strip() for k in keys if k and k.strip()]
    if env:
        raw = os.environ.get(ENV_VAR, "")
        found += [k for k in raw.replace(",", " ").split() if k]
    if key_file is not None:
        for line in Path(key_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    return frozenset(found)


def generate_api_key() -> str:
    return "kvg-" + secrets.token_urlsafe(24)


class ApiKeyChecker:
    """Checks the ``Authorization`` header against a fixed set of keys."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        ok = False
        for key in self._keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok
