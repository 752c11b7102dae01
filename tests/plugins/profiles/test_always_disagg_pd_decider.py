from __future__ import annotations

from plugins.kit import endpoint, make, request


def test_always_disaggregates() -> None:
    decider = make("always-disagg-pd-decider")
    assert decider.disaggregate(request(""), endpoint("d"))
    assert decider.disaggregate(request("x" * 10000), endpoint("d"))
