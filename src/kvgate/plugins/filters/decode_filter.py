"""``decode-filter``: keep endpoints that can decode (P/D disaggregation).

* Parameters: none.
* Rule (llm-d-router's ``bylabel/roles.go`` since #732): label ``llm-d.ai/role`` is one of
  :data:`DECODE_ROLES` (``decode``, ``prefill-decode``, ``both`` — its deprecated name —
  or ``encode-prefill-decode``); endpoints without the label are kept (a plain,
  non-disaggregated server decodes).
* Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.filters.by_label import ByLabel
from kvgate.scheduling.types import ROLE_LABEL

TYPE = "decode-filter"

DECODE_ROLES = ("decode", "prefill-decode", "both", "encode-prefill-decode")


def create(name: str, params: Params, ctx: PluginContext) -> ByLabel:
    return ByLabel(name, ROLE_LABEL, DECODE_ROLES, allows_no_label=True, type_name=TYPE)
