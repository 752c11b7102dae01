"""The request path's Prometheus series: one set, exported by both front doors.

Every series lives in a private :class:`CollectorRegistry` (several servers may run in one
process, e.g. in tests). Names follow the projects users already have dashboards for:

* GIE's EPP (pkg/epp/metrics): ``inference_objective_*`` per request, ``inference_pool_*``
  per pool, ``inference_extension_*`` for the scheduler and its plugins;
* the llm-d course's dashboards: ``vllm_llmd_kv_cache_hit_rate`` and
  ``vllm_llmd_time_to_first_token_seconds``;
* kvgate's own ``kvgate_*`` (requests by endpoint and status, retries, upstream errors,
  per-endpoint gauges).

The hit rate is computed at scrape time from the counters the replicas report
(``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` over the pool). Children
of prometheus_client's labelled counters are cached (``labels()`` takes a lock and builds a tuple
on every call); histograms are kvgate's own (:mod:`.histogram`: one bisect per observation,
the library's exposition), one set of counts per measurement even where GIE and kvgate name it
differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from kvgate.endpoints.pool import EndpointPool
from kvgate.kvcache.metrics import register_metrics as register_kv_metrics
from kvgate.requestcontrol.counters import Counter, Gauge
from kvgate.requestcontrol.eppmetrics import EppMetrics, EppPoolCollector, Labels, RenamedCollector
from kvgate.requestcontrol.histogram import Histogram
from kvgate.scheduling.types import Endpoint

#: Request latencies (seconds): the gateway's own buckets, fine below a second.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
)  # fmt: skip
#: Scheduler and plugin durations.
FAST_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1,
)  # fmt: skip


class _PoolCollector(Collector):
    """Per-endpoint gauges, GIE's pool gauges and the prefix-cache hit rate, at scrape time."""

    def __init__(self, pool: EndpointPool, pool_name: str) -> None:
        self.pool = pool
        self.pool_name = pool_name

    def collect(self) -> Iterator[Any]:
        healthy = GaugeMetricFamily(
            "kvgate_endpoint_in_rotation", "1 if the endpoint is in rotation", labels=["endpoint"]
        )
        queue = GaugeMetricFamily(
            "kvgate_endpoint_queue_size", "Waiting requests last scraped", labels=["endpoint"]
        )
        running = GaugeMetricFamily(
            "kvgate_endpoint_running_requests", "Running requests last scraped", labels=["endpoint"]
        )
        kv = GaugeMetricFamily(
            "kvgate_endpoint_kv_cache_usage", "KV-cache usage fraction", labels=["endpoint"]
        )
        hits = 0.0
        queries = 0.0
        for endpoint in self.pool.all():
            m = endpoint.metrics
            healthy.add_metric([endpoint.name], 1.0 if self.pool.is_healthy(endpoint.name) else 0.0)
            queue.add_metric([endpoint.name], m.waiting_queue_size)
            running.add_metric([endpoint.name], m.running_requests_size)
            kv.add_metric([endpoint.name], m.kv_cache_usage_percent)
            hits += m.prefix_cache_hits
            queries += m.prefix_cache_queries
        rate = hits / queries if queries > 0 else 0.0
        yield healthy
        yield queue
        yield running
        yield kv
        help_text = "Prefix-cache hit rate over the replicas (hit tokens / queried tokens)"
        yield GaugeMetricFamily("kvgate_kv_cache_hit_rate", help_text, value=rate)
        yield GaugeMetricFamily("vllm_llmd_kv_cache_hit_rate", help_text, value=rate)


class RequestMetrics:
    """Counters and histograms the request path updates; :meth:`render` serves /metrics.

    ``pool_name`` labels GIE's ``inference_pool_*`` gauges (the InferencePool's name under
    Kubernetes, ``static`` otherwise).
    """

    def __init__(self, pool: EndpointPool, pool_name: str = "static") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # --- per request, kvgate's names
        self.requests = Counter(
            "kvgate_requests",
            "Requests finished, by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge("kvgate_requests_in_flight", "Requests in progress", registry=r)
        self.e2e = Histogram(
            "kvgate_request_duration_seconds",
            "End-to-end request latency seen at the front door",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "kvgate_time_to_first_token_seconds",
            "Time from request arrival to the first response byte passed to the client",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
            aliases=[
                (
                    "vllm_llmd_time_to_first_token_seconds",
                    "Time to first token seen at the gateway (the llm-d course dashboards' name)",
                )
            ],
        )
        self.prompt_tokens = Counter(
            "kvgate_prompt_tokens", "Prompt tokens reported in usage", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "kvgate_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache (usage.prompt_tokens_details)",
            ["model"],
            registry=r,
        )
        self.picks = Counter(
            "kvgate_endpoint_picks",
            "Times the scheduler picked each endpoint",
            ["endpoint"],
            registry=r,
        )
        self.retries = Counter(
            "kvgate_retries",
            "Requests re-sent to another endpoint, by reason",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "kvgate_upstream_errors",
            "Failed upstream attempts, by endpoint and kind",
            ["endpoint", "kind"],
            registry=r,
        )
        self.scheduling = Histogram(
            "kvgate_scheduling_duration_seconds",
            "Time to run the scheduling profiles for one request",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.plugin = Histogram(
            "kvgate_plugin_duration_seconds",
            "Time spent in one plugin call",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        # --- GIE's and llm-d's names (eppmetrics)
        self.epp = EppMetrics(r)
        r.register(_PoolCollector(pool, pool_name))
        r.register(EppPoolCollector(pool, pool_name))
        register_kv_metrics(r)  # the precise scorer's index and event intake, if any
        self._children: dict[tuple[object, ...], Any] = {}
        self._plugin_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised (label sets are few: models x endpoints)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_plugin(self, point: str, type_name: str, name: str, seconds: float) -> None:
        """The Scheduler's ``observe`` hook: one plugin call (kvgate's and GIE's buckets)."""
        key = (point, type_name, name)
        pair = self._plugin_children.get(key)
        if pair is None:
            pair = self._plugin_children[key] = (
                self.plugin.labels(*key),
                self.epp.plugin.labels(*key),
            )
        pair[0].observe(seconds)
        pair[1].observe(seconds)

    def mirror_flow(self, flow_metrics: object) -> None:
        """Export flow control's ``inference_extension_flow_control_*`` families (the
        collectors among ``flow_metrics``' attributes) also under llm-d's
        ``llm_d_epp_flow_control_*`` names, at scrape time."""
        sources = [m for m in vars(flow_metrics).values() if isinstance(m, MetricWrapperBase)]
        self.registry.register(
            RenamedCollector(
                sources, "inference_extension_flow_control_", "llm_d_epp_flow_control_"
            )
        )

    def scheduled(self, endpoint: Endpoint | None, seconds: float, target_model: str = "") -> None:
        """One scheduling cycle; ``endpoint`` is None when it picked nothing."""
        self.scheduling.observe(seconds)
        self.epp.scheduled(target_model, endpoint, seconds)
        if endpoint is not None:
            self.child(self.picks, endpoint.name).inc()

    def started(self, model: str = "") -> None:
        """The front door will ``finish`` this request (GIE's running gauges start at
        :meth:`parsed`, once the model is known)."""
        self.in_flight.inc()

    def processed(self, seconds: float) -> None:
        """Arrival to the first attempt: parsing, admission and scheduling."""
        self.epp.processed(seconds)

    def parsed(
        self, model: str, target_model: str, fairness_id: str, priority: int, body_size: int
    ) -> Labels:
        """The request is parsed; returns its GIE label values for :meth:`finished`."""
        labels = self.epp.labels(model, target_model, fairness_id, priority)
        self.epp.parsed(labels, body_size)
        return labels

    def finished(
        self,
        model: str,
        target_model: str,
        endpoint: str,
        status: int,
        error: str | None,
        seconds: float,
        ttft_s: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None,
        *,
        labels: Labels | None = None,
        stream: bool = False,
    ) -> None:
        """Count one finished request (exactly once per request, in every name set).

        ``labels`` are those :meth:`parsed` returned (None: the request never parsed, and
        was not counted as running); ``ttft_s`` is for streams only.
        """
        self.in_flight.dec()
        self.child(self.requests, model, endpoint, str(status)).inc()
        self.e2e.labels(model).observe(seconds)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if prompt_tokens:
            self.child(self.prompt_tokens, model).inc(prompt_tokens)
        if cached_tokens:
            self.child(self.cached_tokens, model).inc(cached_tokens)
        running = labels is not None
        if labels is None:
            labels = self.epp.labels(model, target_model, "", 0)
        self.epp.finished(
            labels,
            running,
            status,
            error,
            seconds,
            stream,
            ttft_s,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
