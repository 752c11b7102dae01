"""The gateway's own Prometheus metrics, plus the replicas' prefix-cache hit rate.

Every series lives in a private :class:`CollectorRegistry` (several gateways may run in one
process, e.g. in tests). The hit rate is computed at scrape time from the counters the
replicas report (``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` summed
over the endpoints in the pool) and exported as ``kvgate_kv_cache_hit_rate`` and, for the
llm-d course's dashboards, ``vllm_llmd_kv_cache_hit_rate``; gateway TTFT is exported as
``kvgate_time_to_first_token_seconds`` and ``vllm_llmd_time_to_first_token_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kvgate.endpoints.pool import EndpointPool
from kvgate.kvcache.metrics import register_metrics as register_kv_metrics

LATENCY_BUCKETS = (
    0.001,
    0.0025,
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
    120.0,
)
FAST_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)


class _PoolCollector(Collector):
    """Per-endpoint gauges and the aggregated prefix-cache hit rate, read at scrape time."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool

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
        ready = sum(1 for e in self.pool.all() if self.pool.is_healthy(e.name))
        yield GaugeMetricFamily(
            "inference_pool_ready_pods", "Endpoints in rotation (GIE's name)", value=ready
        )


class GatewayMetrics:
    """Counters and histograms the request path updates; :meth:`render` serves /metrics."""

    def __init__(self, pool: EndpointPool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "kvgate_requests",
            "Requests finished, by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge("kvgate_requests_in_flight", "Requests in progress", registry=r)
        self.e2e = Histogram(
            "kvgate_request_duration_seconds",
            "End-to-end request latency seen at the gateway",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "kvgate_time_to_first_token_seconds",
            "Time from request arrival to the first response byte sent to the client",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_llmd = Histogram(
            "vllm_llmd_time_to_first_token_seconds",
            "Time to first token seen at the gateway (the llm-d course dashboards' name)",
            ["model"],
            buckets=LATENCY_BUCKETS,
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
        self.prompt_tokens = Counter(
            "kvgate_prompt_tokens", "Prompt tokens reported in usage", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "kvgate_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache (usage.prompt_tokens_details)",
            ["model"],
            registry=r,
        )
        r.register(_PoolCollector(pool))
        register_kv_metrics(r)  # the precise scorer's index and event intake, if any
        self._plugin_children: dict[tuple[str, str, str], Any] = {}
        # labels() takes a lock and builds a tuple each call; the request path reuses children
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._model_children: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        self._pick_children: dict[str, Any] = {}

    def _for_model(self, model: str) -> tuple[Any, Any, Any, Any, Any]:
        children = self._model_children.get(model)
        if children is None:
            children = self._model_children[model] = (
                self.e2e.labels(model),
                self.ttft.labels(model),
                self.ttft_llmd.labels(model),
                self.prompt_tokens.labels(model),
                self.cached_tokens.labels(model),
            )
        return children

    def finished(
        self, model: str, endpoint: str, status: int, seconds: float, ttft_s: float | None
    ) -> None:
        """Count one finished request (exactly once per request)."""
        key = (model, endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model, endpoint, str(status))
        child.inc()
        e2e, ttft, ttft_llmd, _, _ = self._for_model(model)
        e2e.observe(seconds)
        if ttft_s is not None:
            ttft.observe(ttft_s)
            ttft_llmd.observe(ttft_s)

    def tokens(self, model: str, prompt_tokens: int, cached_tokens: int) -> None:
        _, _, _, prompt, cached = self._for_model(model)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if cached_tokens:
            cached.inc(cached_tokens)

    def picked(self, endpoint: str) -> None:
        child = self._pick_children.get(endpoint)
        if child is None:
            child = self._pick_children[endpoint] = self.picks.labels(endpoint)
        child.inc()

    def observe_plugin(self, point: str, type_name: str, name: str, seconds: float) -> None:
        """The Scheduler's ``observe`` hook; children are cached (``labels()`` is slow)."""
        key = (point, type_name, name)
        child = self._plugin_children.get(key)
        if child is None:
            child = self._plugin_children[key] = self.plugin.labels(point, type_name, name)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
