"""encode-filter: endpoints with an encode role; unlabelled ones are dropped."""

from __future__ import annotations

from kvgate.scheduling.types import ROLE_LABEL, CycleState
from plugins.kit import endpoint, make, request


def test_keeps_encode_roles_only() -> None:
    eps = [endpoint(role, {ROLE_LABEL: role}) for role in
           ("encode", "encode-prefill", "encode-prefill-decode", "prefill", "decode", "both")]  # fmt: skip
    eps.append(endpoint("none"))
    kept = make("encode-filter").filter(CycleState(), request(), eps)
    assert [e.name for e in kept] == ["encode", "encode-prefill", "encode-prefill-decode"]
