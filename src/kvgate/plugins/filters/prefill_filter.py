"""``prefill-filter``: keep endpoints that can prefill (P/D disaggregation).

* Parameters: none.
* Rule (llm-d-router's ``bylabel/roles.go`` since #732): label ``llm-d.ai/role`` is one of
  :data:`PREFILL_ROLES` (``prefill``, ``encode-prefill``, ``prefill-decode``, ``both`` —
  its deprecated name — or ``encode-prefill-decode``); endpoints without the label are
  dropped.
* Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.filters.by_label import ByLabel
from kvgate.scheduling.types import ROLE_LABEL

TYPE = "prefill-filter"

PREFILL_ROLES = ("prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode")


def create(name: str, params: Params, ctx: PluginContext) -> ByLabel:
    return ByLabel(name, ROLE_LABEL, PREFILL_ROLES, allows_no_label=False, type_name=TYPE)
