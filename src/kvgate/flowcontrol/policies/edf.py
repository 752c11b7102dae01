"""``edf-ordering-policy``: earliest deadline first within a flow.

Deadline = enqueue time + the request's effective TTL; requests without a TTL sort after every
request with one; equal deadlines fall back to arrival order (llm-d's EDF). No parameters.
"""

from __future__ import annotations

from kvgate.flowcontrol.queues import QueuedItem
from kvgate.plugins.base import Params, PluginContext

TYPE = "edf-ordering-policy"


def create(name: str, params: Params, ctx: PluginContext) -> EDFOrdering:
    return EDFOrdering(name)


class EDFOrdering:
    type_name = TYPE

    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    def sort_key(self, queued: QueuedItem) -> tuple[float, int]:
        return (queued.deadline, queued.seq)  # inf for "no deadline" sorts last
