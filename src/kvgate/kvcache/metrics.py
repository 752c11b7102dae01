"""Prometheus view of the precise index and its KV-event intake: ``kvgate_kv_index_*`` and
``kvgate_kv_events_*``; and the approximate prefix index's size, ``kvgate_prefix_index_blocks``.

Indexes and subscribers keep plain counters (no per-event metric cost); a collector reads
them at scrape time. Each server (gateway, EPP) registers the collector in its own registry
with :func:`register_metrics`; every live index and subscriber of the process is summed (per
endpoint where the series has an ``endpoint`` label).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ApproxIndex(Protocol):
    @property
    def total_blocks(self) -> int: ...


if TYPE_CHECKING:
    from kvgate.kvcache.index import KVBlockIndex
    from kvgate.kvcache.subscriber import KVEventSubscriber

__all__ = ["register_metrics", "track_approx_index", "track_index", "track_subscriber"]

_INDEXES: weakref.WeakSet[KVBlockIndex] = weakref.WeakSet()
_SUBSCRIBERS: weakref.WeakSet[KVEventSubscriber] = weakref.WeakSet()
#: the approximate prefix indexes (prefix-cache-scorer / approx-prefix-cache-producer)
_APPROX: weakref.WeakSet[ApproxIndex] = weakref.WeakSet()


def track_index(index: KVBlockIndex) -> None:
    """Count ``index`` in every registry :func:`register_metrics` was called on."""
    _INDEXES.add(index)


def track_approx_index(index: ApproxIndex) -> None:
    """Count an approximate prefix index in ``kvgate_prefix_index_blocks``."""
    _APPROX.add(index)


def track_subscriber(subscriber: KVEventSubscriber) -> None:
    """Count ``subscriber`` in every registry :func:`register_metrics` was called on."""
    _SUBSCRIBERS.add(subscriber)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class KVCacheCollector(Collector):
    """Reads every live index's and subscriber's counters at scrape time."""

    def collect(self) -> Iterator[Metric]:
        approx = list(_APPROX)
        if approx:
            yield _gauge(
                "kvgate_prefix_index_blocks",
                "Prefix block hashes the approximate index holds, summed over endpoints.",
                sum(i.total_blocks for i in approx),
            )
        yield from self._index_metrics(list(_INDEXES))
        yield from self._subscriber_metrics(list(_SUBSCRIBERS))

    @staticmethod
    def _index_metrics(indexes: list[KVBlockIndex]) -> Iterator[Metric]:
        p = "kvgate_kv_index_"
        stats = [i.stats for i in indexes]
        yield _gauge(
            p + "blocks", "Request keys (blocks) in the index.", sum(i.num_blocks for i in indexes)
        )
        yield _gauge(
            p + "entries",
            "(block, endpoint) entries in the index.",
            sum(i.num_entries for i in indexes),
        )
        yield _gauge(
            p + "engine_hashes",
            "Engine block hashes with a known request key.",
            sum(i.num_engine_hashes for i in indexes),
        )
        yield _gauge(
            p + "endpoints", "Endpoints with entries.", sum(len(i.endpoints()) for i in indexes)
        )
        asked = sum(s.lookup_blocks for s in stats)
        hits = sum(s.lookup_hit_blocks for s in stats)
        yield _gauge(
            p + "hit_ratio",
            "Blocks of the best candidate's cached prefix / blocks looked up, since start.",
            hits / asked if asked else 0.0,
        )
        yield _counter(p + "lookups", "Prefix lookups.", sum(s.lookups for s in stats))
        yield _counter(p + "lookup_blocks", "Blocks looked up.", asked)
        yield _counter(p + "lookup_hit_blocks", "Blocks found (best candidate).", hits)
        yield _gauge(
            p + "lag_seconds",
            "Receive time minus the engine's timestamp of the latest event batch.",
            max((s.last_lag_s for s in stats), default=0.0),
        )
        yield _gauge(
            p + "max_lag_seconds",
            "Largest event-batch lag seen.",
            max((s.max_lag_s for s in stats), default=0.0),
        )
        events = CounterMetricFamily(p + "events", "KV events applied, by type.", labels=["type"])
        events.add_metric(["BlockStored"], sum(s.events_stored for s in stats))
        events.add_metric(["BlockRemoved"], sum(s.events_removed for s in stats))
        events.add_metric(["AllBlocksCleared"], sum(s.events_cleared for s in stats))
        yield events
        yield _counter(p + "blocks_stored", "Blocks stored.", sum(s.blocks_stored for s in stats))
        yield _counter(
            p + "blocks_removed", "Blocks removed.", sum(s.blocks_removed for s in stats)
        )
        yield _counter(
            p + "evicted_blocks",
            "Blocks evicted by the index's own cap (LRU).",
            sum(s.evicted_blocks for s in stats),
        )
        yield _counter(
            p + "purged_endpoints",
            "Endpoints whose entries were dropped.",
            sum(s.purged_endpoints for s in stats),
        )
        dropped = CounterMetricFamily(
            p + "dropped_events", "Events not applied, by reason.", labels=["reason"]
        )
        reasons: dict[str, int] = {}
        for s in stats:
            for reason, n in s.dropped_events.items():
                reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in sorted(reasons.items()):
            dropped.add_metric([reason], n)
        yield dropped

    @staticmethod
    def _subscriber_metrics(subscribers: list[KVEventSubscriber]) -> Iterator[Metric]:
        p = "kvgate_kv_events_"
        stats = [s.stats for s in subscribers]
        for name, doc in (
            ("messages", "ZMQ messages received."),
            ("batches_applied", "Event batches applied to the index, in seq order."),
            ("bad_messages", "Messages dropped: wrong frames, topic or seq, undecodable payload."),
            ("gaps", "Seq jumps forward (messages lost or a late join)."),
            ("restarts", "Publishers that started counting from 0 again."),
            ("stale_batches", "Batches ignored as duplicates or overtaken by their successor."),
            ("replays_ok", "Gaps repaired through the replay socket."),
            ("replays_failed", "Gaps the replay socket could not repair."),
            ("replayed_batches", "Batches applied from replays."),
            (
                "dropped_endpoints",
                "Times an endpoint's entries were dropped (gap, restart, purge).",
            ),
            (
                "unmatched_messages",
                "Batches whose topic names no endpoint of the pool (host:port or pod IP).",
            ),
        ):
            yield _counter(p + name, doc, sum(getattr(s, name) for s in stats))
        last = GaugeMetricFamily(
            p + "last_seq",
            "Seq of the last event batch applied, per endpoint (the engine's next batch is "
            "last_seq + 1; compare with what the engine published to see the backlog).",
            labels=["endpoint"],
        )
        seqs: dict[str, int] = {}
        for sub in subscribers:
            for endpoint, seq in sub.last_seqs().items():
                seqs[endpoint] = max(seq, seqs.get(endpoint, seq))
        for endpoint, seq in sorted(seqs.items()):
            last.add_metric([endpoint], seq)
        yield last


def register_metrics(registry: CollectorRegistry) -> None:
    """Expose ``kvgate_kv_index_*`` and ``kvgate_kv_events_*`` on ``registry``."""
    registry.register(KVCacheCollector())
