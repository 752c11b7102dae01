from __future__ import annotations

from kvgate.scheduling.types import (
    HEADER_ENCODERS,
    HEADER_PREFILLER,
    ProfileRunResult,
    SchedulingResult,
)
from plugins.kit import endpoint, make, request

DEC, PRE, E1, E2 = endpoint("d"), endpoint("p"), endpoint("e1"), endpoint("e2")


def test_sets_both_stage_headers_and_clears_stale_ones() -> None:
    handler = make("disagg-headers-handler", {"prefillProfile": "p", "encodeProfile": "e"})
    result = SchedulingResult(
        {
            "decode": ProfileRunResult((DEC,)),
            "p": ProfileRunResult((PRE,)),
            "e": ProfileRunResult((E1, E2)),
        },
        "decode",
    )
    headers: dict[str, str] = {}
    handler.pre_request(request(), result, headers)
    assert headers == {
        HEADER_PREFILLER: PRE.hostport,
        HEADER_ENCODERS: f"{E1.hostport},{E2.hostport}",
    }
    decode_only = SchedulingResult({"decode": ProfileRunResult((DEC,))}, "decode")
    handler.pre_request(request(), decode_only, headers)
    assert headers == {}
