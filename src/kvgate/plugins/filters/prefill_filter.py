"""``prefill-filter``: keep endpoints dedicated to prefill (P/D disaggregation).

* Parameters: none.
* Rule: label ``llm-d.ai/role`` is ``prefill``; endpoints without the label are dropped.
* Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.filters.by_label import ByLabel
from kvgate.scheduling.types import ROLE_LABEL

TYPE = "prefill-filter"


def create(name: str, params: Params, ctx: PluginContext) -> ByLabel:
    return ByLabel(name, ROLE_LABEL, ("prefill",), allows_no_label=False, type_name=TYPE)
