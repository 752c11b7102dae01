"""The queues flow control holds requests in: one per flow, grouped in priority bands.

A *flow* is a fairness id within one priority; a *band* holds every flow of one priority.
Dispatch takes the highest non-empty band, asks the band's fairness policy for a flow and
takes that flow's head under the band's ordering policy (llm-d's three-tier hierarchy).

Invariants: ``FlowQueue.size``/``byte_size`` and ``Band.size``/``byte_size`` count exactly the
items still waiting (removal by dispatch, TTL, cancellation or shutdown updates them at once;
the heap entry of a removed item is dropped lazily when it reaches the top).
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvgate.flowcontrol.config import PriorityBandConfig
    from kvgate.flowcontrol.controller import FlowItem


@dataclass(slots=True, eq=False)
class QueuedItem:
    """A waiting request: what the policies order on, and how to wake its caller."""

    item: FlowItem
    seq: int  # arrival order at the controller (FCFS, and every tie-break)
    enqueued_at: float  # controller clock
    deadline: float  # enqueued_at + TTL; inf when the request may wait forever
    future: asyncio.Future[float]
    timer: asyncio.TimerHandle | None = None
    waiting: bool = True  # False once dispatched, expired, cancelled or shut down


class OrderingPolicy(Protocol):
    """Which request of a flow goes first (``fcfs-ordering-policy``, ``edf-ordering-policy``)."""

    type_name: str
    name: str

    def sort_key(self, queued: QueuedItem) -> tuple[float, int]:
        """Smaller is dispatched first; must be fixed for the item's life in the queue."""
        ...


class FairnessPolicy(Protocol):
    """Which flow of a band gets the next dispatch (``round-robin-fairness-policy``, ...)."""

    type_name: str
    name: str

    def pick(self, band: Band) -> FlowQueue | None:
        """A non-empty flow of ``band``, or None when the band is empty."""
        ...


@dataclass(slots=True, eq=False)
class FlowQueue:
    """One flow's waiting requests, kept in a heap by the ordering policy's key."""

    fairness_id: str
    ordering: OrderingPolicy
    heap: list[tuple[tuple[float, int], QueuedItem]] = field(default_factory=list)
    size: int = 0
    byte_size: int = 0

    def push(self, queued: QueuedItem) -> None:
        heapq.heappush(self.heap, (self.ordering.sort_key(queued), queued))
        self.size += 1
        self.byte_size += queued.item.byte_size

    def head(self) -> QueuedItem | None:
        """The next item under the ordering policy (skipping removed ones)."""
        heap = self.heap
        while heap and not heap[0][1].waiting:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def head_key(self) -> tuple[float, int] | None:
        return self.heap[0][0] if self.head() is not None else None

    def pop(self) -> QueuedItem | None:
        queued = self.head()
        if queued is not None:
            heapq.heappop(self.heap)
        return queued


@dataclass(slots=True, eq=False)
class Band:
    """Every flow of one priority, with the band's limits and policies."""

    config: PriorityBandConfig
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    flows: dict[str, FlowQueue] = field(default_factory=dict)  # fairness id -> queue
    size: int = 0
    byte_size: int = 0
    cursor: str | None = None  # last flow picked (round-robin state, as llm-d keeps per band)

    @property
    def priority(self) -> int:
        return self.config.priority

    def flow(self, fairness_id: str) -> FlowQueue:
        queue = self.flows.get(fairness_id)
        if queue is None:
            queue = self.flows[fairness_id] = FlowQueue(fairness_id, self.ordering)
        return queue

    def non_empty(self) -> list[FlowQueue]:
        return [q for q in self.flows.values() if q.size > 0]
