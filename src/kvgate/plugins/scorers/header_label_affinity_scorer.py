"""``header-label-affinity-scorer`` (llm-d-router): prefer endpoints whose label equals a
request header.

* Formula: 1.0 when the endpoint's ``labelKey`` label equals the request's ``headerName``
  header (non-empty), else 0.0; nothing is filtered out. One instance per header/label pair,
  so each preference has its own profile weight (llm-d's DisaggregatedSet slice affinity:
  ``x-disagg-slice`` against ``disaggregatedset.x-k8s.io/slice``).
* Parameters: ``headerName`` and ``labelKey`` (both required; the header matches in any
  case).
* Inputs: request headers, endpoint labels. State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "header-label-affinity-scorer"


class HeaderLabelAffinityScorer:
    """See the module docstring."""

    type_name = TYPE

    def __init__(self, name: str, header_name: str, label_key: str) -> None:
        self.name = name
        self.header_name = header_name  # lower-cased: request headers are
        self.label_key = label_key

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        wanted = request.headers.get(self.header_name, "")
        key = self.label_key
        return {e.name: 1.0 if wanted and e.labels.get(key) == wanted else 0.0 for e in endpoints}


def create(name: str, params: Params, ctx: PluginContext) -> HeaderLabelAffinityScorer:
    header = params.get_str("headerName", "")
    label = params.get_str("labelKey", "")
    for field, value in (("headerName", header), ("labelKey", label)):
        if not value:
            raise PluginParameterError(field, "required")
    return HeaderLabelAffinityScorer(name, header.lower(), label)
