"""``disagg-headers-handler`` (llm-d, deprecated there for ``disagg-profile-handler``'s own PreRequest).

Tells the routing sidecar beside the decode server where the disaggregated stages run.

* Parameters: ``prefillProfile`` (default ``"prefill"``), ``encodeProfile`` (default
  ``"encode"``).
* PreRequest: removes ``x-prefiller-host-port`` and ``x-encoder-hosts-ports`` set earlier in
  the cycle; sets ``x-prefiller-host-port`` to the prefill profile's first target
  (``ip:port``) and ``x-encoder-hosts-ports`` to the encode profile's targets, comma-joined,
  for each stage that ran and picked. (Client-sent copies never get here: the front doors
  strip routing headers at the edge.)
* State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import HEADER_ENCODERS, HEADER_PREFILLER, Request, SchedulingResult

TYPE = "disagg-headers-handler"


def set_disagg_headers(
    result: SchedulingResult, headers: dict[str, str], prefill_profile: str, encode_profile: str
) -> None:
    """Replace the two stage headers with what ``result`` picked for those profiles."""
    headers.pop(HEADER_PREFILLER, None)
    headers.pop(HEADER_ENCODERS, None)
    prefill = result.profile_results.get(prefill_profile)
    if prefill is not None and prefill.targets:
        headers[HEADER_PREFILLER] = prefill.targets[0].hostport
    encode = result.profile_results.get(encode_profile)
    if encode is not None and encode.targets:
        headers[HEADER_ENCODERS] = ",".join(t.hostport for t in encode.targets)


class DisaggHeadersHandler:
    """PreRequest: the stage headers from the prefill and encode profiles' picks."""

    type_name = TYPE

    def __init__(
        self, name: str, prefill_profile: str = "prefill", encode_profile: str = "encode"
    ) -> None:
        self.name = name
        self.prefill_profile = prefill_profile
        self.encode_profile = encode_profile

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        set_disagg_headers(result, headers, self.prefill_profile, self.encode_profile)


def create(name: str, params: Params, ctx: PluginContext) -> DisaggHeadersHandler:
    return DisaggHeadersHandler(
        name,
        params.get_str("prefillProfile", "prefill"),
        params.get_str("encodeProfile", "encode"),
    )
