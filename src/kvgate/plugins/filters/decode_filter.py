"""``decode-filter``: keep endpoints that can decode (P/D disaggregation).

* Parameters: none.
* Rule: label ``llm-d.ai/role`` is ``decode`` or ``both``; endpoints without the label are
  kept (a plain, non-disaggregated server decodes).
* Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.filters.by_label import ByLabel
from kvgate.scheduling.types import ROLE_LABEL

TYPE = "decode-filter"


def create(name: str, params: Params, ctx: PluginContext) -> ByLabel:
    return ByLabel(name, ROLE_LABEL, ("decode", "both"), allows_no_label=True, type_name=TYPE)
