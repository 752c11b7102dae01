from __future__ import annotations

from kvgate.scheduling.types import HEADER_PREFILLER, ProfileRunResult, SchedulingResult
from plugins.kit import endpoint, make, request

DEC, PRE = endpoint("d"), endpoint("p")


def test_sets_the_prefill_target_and_clears_stale_values() -> None:
    plugin = make("prefill-header-handler")
    headers = {HEADER_PREFILLER: "1.2.3.4:1"}
    both = SchedulingResult(
        {"decode": ProfileRunResult((DEC,)), "prefill": ProfileRunResult((PRE,))}, "decode"
    )
    plugin.pre_request(request(), both, headers)
    assert headers == {HEADER_PREFILLER: PRE.hostport}
    plugin.pre_request(
        request(), SchedulingResult({"decode": ProfileRunResult((DEC,))}, "decode"), headers
    )
    assert headers == {}


def test_custom_profile_name() -> None:
    plugin = make("prefill-header-handler", {"prefillProfile": "pf"})
    headers: dict[str, str] = {}
    result = SchedulingResult(
        {"decode": ProfileRunResult((DEC,)), "pf": ProfileRunResult((PRE,))}, "decode"
    )
    plugin.pre_request(request(), result, headers)
    assert headers == {HEADER_PREFILLER: PRE.hostport}
