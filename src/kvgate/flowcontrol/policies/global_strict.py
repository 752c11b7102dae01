"""``global-strict-fairness-policy``: no fairness; the band is one queue (llm-d's default).

Picks the flow whose head is best under the ordering policy, so with FCFS the band dispatches
in global arrival order whatever the fairness ids. No parameters.
"""

from __future__ import annotations

from kvgate.flowcontrol.queues import Band, FlowQueue
from kvgate.plugins.base import Params, PluginContext

TYPE = "global-strict-fairness-policy"


def create(name: str, params: Params, ctx: PluginContext) -> GlobalStrictFairness:
    return GlobalStrictFairness(name)


class GlobalStrictFairness:
    type_name = TYPE

    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    def pick(self, band: Band) -> FlowQueue | None:
        best: FlowQueue | None = None
        best_key: tuple[float, int] | None = None
        for queue in band.flows.values():
            if queue.size == 0:
                continue
            key = queue.head_key()
            if key is not None and (best_key is None or key < best_key):
                best, best_key = queue, key
        return best
