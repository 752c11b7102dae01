"""Flow-control metrics under GIE's names (``inference_extension_flow_control_*``).

Labels follow GIE's ``pkg/epp/metrics``: ``fairness_id``, ``priority``, ``inference_pool``,
``model_name``, ``target_model_name`` (kvgate learns the target only after scheduling, so it
is empty), and for the queue-duration histogram ``outcome`` with llm-d's outcome names
(``Dispatched``, ``RejectedCapacity``, ``RejectedOther``, ``EvictedTTL``,
``EvictedContextCancelled``, ``EvictedOther``) plus kvgate's ``Shed`` (llm-d sheds before flow
control, in its admission controller, and counts nothing there). The requests counter is
llm-d-router's ``flow_control_requests_total{outcome, priority, inference_pool}``.
Label children are cached: the admit fast path must stay within a few microseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import prometheus_client

if TYPE_CHECKING:
    from kvgate.flowcontrol.controller import FlowItem

_PREFIX = "inference_extension_flow_control_"
# GIE's buckets for flow_control_request_queue_duration_seconds.
_QUEUE_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_FLOW_LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


class FlowMetrics:
    """The controller's counters and gauges, registered into ``registry`` (default: global)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None, pool: str) -> None:
        reg = prometheus_client.REGISTRY if registry is None else registry
        self.registry = reg
        self.pool = pool
        self.queue_duration = prometheus_client.Histogram(
            _PREFIX + "request_queue_duration_seconds",
            "Distribution of total time requests spend in the Flow Control layer "
            "(from enqueue to final outcome).",
            (
                "fairness_id",
                "priority",
                "outcome",
                "inference_pool",
                "model_name",
                "target_model_name",
            ),
            buckets=_QUEUE_BUCKETS,
            registry=reg,
        )
        self.queue_size = prometheus_client.Gauge(
            _PREFIX + "queue_size",
            "Current number of requests actively held in the Flow Control queue.",
            _FLOW_LABELS,
            registry=reg,
        )
        self.queue_bytes = prometheus_client.Gauge(
            _PREFIX + "queue_bytes",
            "Current total size in bytes of requests actively held in the Flow Control queue.",
            _FLOW_LABELS,
            registry=reg,
        )
        self.pool_saturation = prometheus_client.Gauge(
            _PREFIX + "pool_saturation",
            "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
            ("inference_pool",),
            registry=reg,
        )
        self.requests = prometheus_client.Counter(
            _PREFIX + "requests",
            "Total number of requests processed by the Flow Control layer.",
            ("outcome", "priority", "inference_pool"),
            registry=reg,
        )
        self._saturation_child = self.pool_saturation.labels(pool)
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._flow_children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def outcome(self, item: FlowItem, outcome: str, waited_s: float) -> None:
        key = (item.fairness_id, str(item.priority), outcome, item.model)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.queue_duration.labels(
                    item.fairness_id, str(item.priority), outcome, self.pool, item.model, ""
                ),
                self.requests.labels(outcome, str(item.priority), self.pool),
            )
        children[0].observe(waited_s)
        children[1].inc()

    def queued(self, item: FlowItem, delta: int) -> None:
        key = (item.fairness_id, str(item.priority), item.model)
        children = self._flow_children.get(key)
        if children is None:
            labels = (item.fairness_id, str(item.priority), self.pool, item.model, "")
            children = self._flow_children[key] = (
                self.queue_size.labels(*labels),
                self.queue_bytes.labels(*labels),
            )
        children[0].inc(delta)
        children[1].inc(delta * item.byte_size)

    def saturation(self, value: float) -> None:
        self._saturation_child.set(value)
