"""``destination-endpoint-served-verifier``: name the endpoint that served the request.

* Behaviour: sets the ``x-conformance-test-served-endpoint`` response header to the served
  endpoint's ``address:port``, which GIE's conformance suite compares with the endpoint it
  asked for. **Difference from llm-d:** llm-d reads the address from the ``envoy.lb``
  metadata Envoy reports back with the response headers (so a missing one reads
  ``fail: ...``); kvgate sets it from the endpoint its request path forwarded this attempt
  to, which is the one that answered (``kvgate serve`` proxies itself; under ``kvgate epp``
  Envoy sends the request to the destination kvgate named). Like every header a
  ResponseComplete hook adds, it reaches the client while the response's headers are still
  to be sent: a non-streamed answer through ``kvgate serve``, the response-headers phase
  under ``kvgate epp``.
* Parameters: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Endpoint, Request, ResponseInfo

TYPE = "destination-endpoint-served-verifier"

#: The response header GIE's conformance suite reads.
HEADER = "x-conformance-test-served-endpoint"


class DestinationEndpointServedVerifier:
    """See the module docstring."""

    type_name = TYPE
    strict_notes = (
        "reports the endpoint kvgate forwarded the attempt to, not the served endpoint "
        "Envoy reports in its envoy.lb metadata",
    )

    def __init__(self, name: str) -> None:
        self.name = name

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        response.headers[HEADER] = endpoint.hostport


def create(name: str, params: Params, ctx: PluginContext) -> DestinationEndpointServedVerifier:
    return DestinationEndpointServedVerifier(name)
