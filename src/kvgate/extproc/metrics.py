"""Prometheus metrics of ``kvgate epp``, under GIE's EPP names where GIE has one.

GIE (pkg/epp/metrics) exports ``inference_objective_*`` per request, ``inference_pool_*``
per pool and ``inference_extension_*`` for the scheduler; dashboards built for the Go EPP
keep working. kvgate-only series are prefixed ``kvgate_epp_``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kvgate.endpoints.pool import EndpointPool
from kvgate.kvcache.metrics import register_metrics as register_kv_metrics

_LATENCY_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
_SCHED_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(0, 17))


class _PoolCollector(Collector):
    """inference_pool_* gauges, computed from the pool when scraped."""

    def __init__(self, pool: EndpointPool, pool_name: str) -> None:
        self._pool = pool
        self._pool_name = pool_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = self._pool.candidates()
        kv = GaugeMetricFamily(
            "inference_pool_average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool.",
            labels=["name"],
        )
        queue = GaugeMetricFamily(
            "inference_pool_average_queue_size",
            "The average number of requests pending in the model server queue.",
            labels=["name"],
        )
        pods = GaugeMetricFamily(
            "inference_pool_ready_pods",
            "The number of ready pods in the inference server pool.",
            labels=["name"],
        )
        n = len(ready)
        kv.add_metric(
            [self._pool_name],
            sum(e.metrics.kv_cache_usage_percent for e in ready) / n if n else 0.0,
        )
        queue.add_metric(
            [self._pool_name], sum(e.metrics.waiting_queue_size for e in ready) / n if n else 0.0
        )
        pods.add_metric([self._pool_name], n)
        yield kv
        yield queue
        yield pods


class EppMetrics:
    """Every series the EPP exports, in its own registry (one per server instance)."""

    def __init__(self, pool: EndpointPool, pool_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["model_name", "target_model_name"]
        self.requests = Counter(
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            labels,
            registry=r,
        )
        self.errors = Counter(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*labels, "error_code"],
            registry=r,
        )
        self.duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            ["model_name"],
            registry=r,
        )
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.plugin_duration = Histogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.decision = Histogram(
            "kvgate_epp_decision_duration_seconds",
            "Time from the end of the request body to the routing reply being built: parsing, "
            "scheduling, PreRequest hooks and the ext_proc messages (gRPC transport excluded).",
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.streams = Counter(
            "kvgate_epp_streams_total",
            "ext_proc streams (one per HTTP request through Envoy), by how they ended.",
            ["outcome"],
            registry=r,
        )
        r.register(_PoolCollector(pool, pool_name))
        register_kv_metrics(r)  # the precise scorer's index and event intake, if any

        # labels() costs a lock and a dict build per call; the request path keeps children
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised (label sets are few: models x plugins)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_plugin(self, point: str, type_name: str, name: str, seconds: float) -> None:
        self.child(self.plugin_duration, point, type_name, name).observe(seconds)
