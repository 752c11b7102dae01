"""``prefill-header-handler`` (llm-d): tell the decode sidecar which endpoint prefills.

* Parameters: ``prefillProfile`` (default ``"prefill"``).
* PreRequest: removes any ``x-prefiller-host-port`` set earlier in the cycle, then, when the
  prefill profile picked a target, sets it to that target's ``ip:port``. (Client-sent copies
  never reach here: the gateway strips routing headers at the edge.)
* State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import HEADER_PREFILLER, Request, SchedulingResult

TYPE = "prefill-header-handler"


class PrefillHeaderHandler:
    """Sets ``x-prefiller-host-port`` from the prefill profile's target (PreRequest)."""

    type_name = TYPE

    def __init__(self, name: str, prefill_profile: str = "prefill") -> None:
        self.name = name
        self.prefill_profile = prefill_profile

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        headers.pop(HEADER_PREFILLER, None)
        prefill = result.profile_results.get(self.prefill_profile)
        if prefill is not None and prefill.targets:
            headers[HEADER_PREFILLER] = prefill.targets[0].hostport


def create(name: str, params: Params, ctx: PluginContext) -> PrefillHeaderHandler:
    return PrefillHeaderHandler(name, params.get_str("prefillProfile", "prefill"))
