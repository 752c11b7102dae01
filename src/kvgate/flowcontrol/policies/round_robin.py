"""``round-robin-fairness-policy``: flows of a band take turns, one dispatch each.

Flow ids are visited in sorted order starting after the last flow served (the cursor lives on
the band, as in llm-d); empty flows are skipped, so the policy is work-conserving and no flow
can starve another whatever its volume. No parameters.
"""

from __future__ import annotations

from kvgate.flowcontrol.queues import Band, FlowQueue
from kvgate.plugins.base import Params, PluginContext

TYPE = "round-robin-fairness-policy"


def create(name: str, params: Params, ctx: PluginContext) -> RoundRobinFairness:
    return RoundRobinFairness(name)


class RoundRobinFairness:
    type_name = TYPE

    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    def pick(self, band: Band) -> FlowQueue | None:
        ids = sorted(fid for fid, q in band.flows.items() if q.size > 0)
        if not ids:
            return None
        chosen = ids[0]
        if band.cursor is not None:
            for fid in ids:
                if fid > band.cursor:
                    chosen = fid
                    break
        band.cursor = chosen
        return band.flows[chosen]
