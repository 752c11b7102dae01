"""``fcfs-ordering-policy``: a flow's requests leave in arrival order (llm-d's default).

Arrival is the order ``FlowController.admit`` saw the requests, so this is strict FCFS (llm-d
pairs it with a list queue; with one controller per process kvgate has no shards to blur it).
No parameters.
"""

from __future__ import annotations

from kvgate.flowcontrol.queues import QueuedItem
from kvgate.plugins.base import Params, PluginContext

TYPE = "fcfs-ordering-policy"


def create(name: str, params: Params, ctx: PluginContext) -> FCFSOrdering:
    return FCFSOrdering(name)


class FCFSOrdering:
    type_name = TYPE

    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    def sort_key(self, queued: QueuedItem) -> tuple[float, int]:
        return (0.0, queued.seq)
