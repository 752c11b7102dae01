"""``static-usage-limit-policy``: one dispatch ceiling for every priority band.

The controller dispatches while pool saturation < ``threshold``. ``threshold`` (default 1.0,
no gating beyond saturation itself) must be in (0, 1]; 0.8 keeps 20 % headroom. Framework-
injected when ``flowControl.usageLimitPolicyPluginRef`` is unset, as in llm-d.
"""

from __future__ import annotations

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext

TYPE = "static-usage-limit-policy"


def create(name: str, params: Params, ctx: PluginContext) -> StaticUsageLimit:
    threshold = params.get_float("threshold", 1.0, maximum=1.0)
    if threshold <= 0:
        raise PluginParameterError("threshold", f"expected a number in (0, 1], got {threshold}")
    return StaticUsageLimit(name, threshold)


class StaticUsageLimit:
    type_name = TYPE

    def __init__(self, name: str = TYPE, threshold: float = 1.0) -> None:
        self.name = name
        self.threshold = threshold

    def limit(self, priority: int) -> float:
        """The saturation below which ``priority``'s band may dispatch."""
        return self.threshold
