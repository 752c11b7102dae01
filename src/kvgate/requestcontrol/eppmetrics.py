"""GIE's / llm-d's EPP series, under both of the names the current EPP exports.

llm-d-router (the EPP that GIE's ``pkg/epp`` became; commit ``ebab687``,
``pkg/epp/metrics/metrics.go`` and ``llm_d_router_metrics.go``) exports every request, pool
and scheduler series twice: under GIE's deprecated ``inference_objective_*`` /
``inference_pool_*`` / ``inference_extension_*`` names and under ``llm_d_epp_*``, which adds
``fairness_id`` and ``priority`` to the per-request label sets. Both are here with llm-d's
names, types, label names and buckets, and help texts of the same meaning with the
``[ALPHA]`` stability prefix Kubernetes' component-base puts on them.

Invariants:

* one observation per measurement and name set, on kvgate's :class:`.histogram.Histogram`
  (a bisect, no lock) and cached counter children: the request path stays within a few
  microseconds;
* request-derived label values are bounded as llm-d bounds them (``cardinality.go``): at
  most 1000 distinct model names and 1000 fairness ids, later ones are reported as
  ``other``;
* a running-requests child incremented for a request is decremented with the same label
  values (the front door keeps the :data:`Labels` it got from :meth:`EppMetrics.parsed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvgate.endpoints.pool import EndpointPool
from kvgate.requestcontrol.counters import Counter, Gauge
from kvgate.requestcontrol.histogram import Histogram
from kvgate.scheduling.types import Endpoint

#: (model_name, target_model_name, fairness_id, priority): one request's label values.
Labels = tuple[str, str, str, str]

LLMD = "llm_d_epp_"
OVERFLOW = "other"
MAX_LABEL_VALUES = 1000

GENERAL_LATENCY_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 B .. 1 GiB
INPUT_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)  # fmt: skip  (32778, not 32768: llm-d's value)
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TTFT_BUCKETS = GENERAL_LATENCY_BUCKETS[:24]  # 5 ms .. 120 s
TPOT_BUCKETS = (
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.6, 0.8, 1, 2,
)  # fmt: skip
REQUEST_PROCESSING_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip

_MODEL = ("model_name", "target_model_name")
_MODEL_FP = (*_MODEL, "fairness_id", "priority")


def _help(text: str) -> str:
    return f"[ALPHA] {text}"


def _deprecated(new: str, text: str) -> str:
    return f"[ALPHA] [Deprecated: Use {LLMD}{new}] {text}"


class _Bounded:
    """llm-d's label bound: the first ``limit`` distinct values pass, later ones are
    ``other``; the empty value always passes."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value or value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OVERFLOW
        self.seen.add(value)
        return value


def endpoint_identity(endpoint: Endpoint) -> tuple[str, str, str]:
    """(pod name, namespace, port) for the scheduler-attempts labels: kvgate names a
    Kubernetes endpoint ``<namespace>/<pod>-rank-<i>`` and a static one ``host:port``."""
    namespace, sep, pod = endpoint.name.partition("/")
    if not sep:
        namespace, pod = "", endpoint.name
    return pod, namespace, str(endpoint.port)


def build_info() -> tuple[str, str]:
    """(commit, build_ref) for the info gauges: kvgate has no build stamp, so the commit is
    unknown and the build ref is the installed package version."""
    try:
        ref = version("kvgate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        ref = "unknown"
    return "unknown", ref


class EppMetrics:
    """The per-request and scheduler series (see the module docstring).

    Registered into ``registry``; :class:`EppPoolCollector` adds the pool gauges.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._model = _Bounded()
        self._fairness = _Bounded()
        self._children: dict[tuple[object, ...], Any] = {}
        self._series: dict[Labels, _Series] = {}
        self._attempt_children: dict[tuple[str, str | None], tuple[Any, Any]] = {}

        def twin_hist(gie: str, new: str, text: str, buckets: Sequence[float]) -> Histogram:
            # one set of counts: llm-d's name with every label, GIE's summed over the two
            # labels it lacks when scraped (one observation per request, not two)
            return Histogram(
                LLMD + new,
                _help(text),
                _MODEL_FP,
                buckets=buckets,
                registry=r,
                aliases=[(gie, _deprecated(new, text), _MODEL)],
            )

        io = "inference_objective_"
        # one count each, under llm-d's name with every label and GIE's older name summed
        # over the labels it lacks (scrape time), as twin_hist does for the histograms
        self.requests = Counter(
            LLMD + "request_total",
            _help("Total number of processed requests."),
            _MODEL_FP,
            registry=r,
            aliases=[
                (
                    io + "request_total",
                    _deprecated(
                        "request_total",
                        "Counter of inference objective requests broken out for each model and "
                        "target model.",
                    ),
                    [*_MODEL, "priority"],
                )
            ],
        )
        self.errors = Counter(
            LLMD + "request_error_total",
            _help("Total number of request errors."),
            [*_MODEL_FP, "error_code"],
            registry=r,
            aliases=[
                (
                    io + "request_error_total",
                    _deprecated(
                        "request_error_total",
                        "Counter of inference objective requests errors broken out for each "
                        "model and target model.",
                    ),
                    [*_MODEL, "error_code"],
                )
            ],
        )
        self.duration = twin_hist(
            io + "request_duration_seconds",
            "request_duration_seconds",
            "End-to-end request latency distribution in seconds for each model and target model.",
            GENERAL_LATENCY_BUCKETS,
        )
        self.request_size = twin_hist(
            io + "request_sizes",
            "request_size_bytes",
            "Request body size distribution in bytes for each model and target model.",
            REQUEST_SIZE_BUCKETS,
        )
        self.input_tokens = twin_hist(
            io + "input_tokens",
            "request_input_tokens",
            "Prompt (input) token count distribution per request.",
            INPUT_TOKEN_BUCKETS,
        )
        self.output_tokens = twin_hist(
            io + "output_tokens",
            "request_output_tokens",
            "Completion (output) token count distribution per request.",
            OUTPUT_TOKEN_BUCKETS,
        )
        self.cached_tokens = twin_hist(
            io + "prompt_cached_tokens",
            "request_cached_tokens",
            "Distribution of prompt tokens the model server read from its prefix cache, as its "
            "response reports them.",
            INPUT_TOKEN_BUCKETS,
        )
        self.ntpot = twin_hist(
            io + "normalized_time_per_output_token_seconds",
            "request_ntpot_seconds",
            "End-to-end request latency divided by the output token count, in seconds.",
            NTPOT_BUCKETS,
        )
        self.running = Gauge(
            LLMD + "request_running",
            _help("Current number of running requests."),
            _MODEL_FP,
            registry=r,
            aliases=[
                (
                    io + "running_requests",
                    _deprecated("request_running", "Number of running requests for each model."),
                    ["model_name"],
                )
            ],
        )
        self.ttft = Histogram(
            LLMD + "request_ttft_seconds",
            _help(
                "Time to first token in seconds, from request arrival to the first response "
                "byte; for a non-streaming request the whole request duration."
            ),
            [*_MODEL_FP, "streaming"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            LLMD + "request_streaming_tpot_seconds",
            _help(
                "Mean time per output token of a streaming request in seconds: "
                "(end-to-end - TTFT) / (output tokens - 1)."
            ),
            _MODEL_FP,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.request_processing = Histogram(
            LLMD + "request_processing_duration_seconds",
            _help(
                "Time from request arrival until the EPP has handled the request body "
                "(parsing, admission control and scheduling), in seconds."
            ),
            buckets=REQUEST_PROCESSING_BUCKETS,
            registry=r,
        )
        ie = "inference_extension_"
        self.scheduler_e2e = Histogram(
            ie + "scheduler_e2e_duration_seconds",
            _deprecated(
                "scheduler_e2e_duration_seconds",
                "End-to-end scheduling latency distribution in seconds.",
            ),
            buckets=SCHEDULER_BUCKETS,
            registry=r,
            aliases=[
                (
                    LLMD + "scheduler_e2e_duration_seconds",
                    _help("End-to-end scheduling latency distribution in seconds."),
                )
            ],
        )
        plugin_text = (
            "Plugin processing latency distribution in seconds for each extension point, "
            "plugin type and plugin name."
        )
        self.plugin = Histogram(
            ie + "plugin_duration_seconds",
            _deprecated("plugin_duration_seconds", plugin_text),
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=SCHEDULER_BUCKETS,
            registry=r,
            aliases=[(LLMD + "plugin_duration_seconds", _help(plugin_text))],
        )
        attempts_text = "Total number of scheduling attempts."
        self.attempts = (
            Counter(
                ie + "scheduler_attempts_total",
                _deprecated("scheduler_attempts_total", attempts_text),
                ["status", "target_model_name", "pod_name", "namespace", "port"],
                registry=r,
            ),
            Counter(
                LLMD + "scheduler_attempts_total",
                _help(attempts_text),
                ["status", "target_model_name", "endpoint_name", "namespace", "port"],
                registry=r,
            ),
        )
        info_text = "General information of the current build of the endpoint picker."
        commit, ref = build_info()
        for name in (ie + "info", LLMD + "info"):
            Gauge(name, _help(info_text), ["commit", "build_ref"], registry=r).labels(
                commit, ref
            ).set(1)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # --- the request path -------------------------------------------------------------------

    def labels(self, model: str, target: str, fairness_id: str, priority: int) -> Labels:
        """A request's label values, bounded (see the module docstring)."""
        return (self._model(model), self._model(target), self._fairness(fairness_id), str(priority))

    def series(self, labels: Labels) -> _Series:
        """The children of every per-request series for one label set, looked up once."""
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = _Series(self, labels)
        return found

    def parsed(self, labels: Labels, body_size: int) -> None:
        """The request is parsed: it runs from now until :meth:`finished`."""
        series = self.series(labels)
        series.running.inc()
        series.size.observe(body_size)

    def processed(self, seconds: float) -> None:
        """The request side is done (parsed, admitted, scheduled): the first attempt starts."""
        self.request_processing.observe(seconds)

    def scheduled(self, target_model: str, endpoint: Endpoint | None, seconds: float) -> None:
        """One scheduling cycle; ``endpoint`` is None when it failed."""
        self.scheduler_e2e.observe(seconds)
        key = (target_model, endpoint.name if endpoint is not None else None)
        pair = self._attempt_children.get(key)
        if pair is None:
            if endpoint is None:
                status, ident = "failure", ("", "", "")
            else:
                status, ident = "success", endpoint_identity(endpoint)
            labels = (status, self._model(target_model), *ident)
            pair = (self.attempts[0].labels(*labels), self.attempts[1].labels(*labels))
            if len(self._attempt_children) < 4 * MAX_LABEL_VALUES:  # bounded like the labels
                self._attempt_children[key] = pair
        pair[0].inc()
        pair[1].inc()

    def finished(
        self,
        labels: Labels,
        running: bool,
        status: int,
        error: str | None,
        seconds: float,
        stream: bool,
        ttft_s: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None,
    ) -> None:
        """Count one finished request; ``running``: :meth:`parsed` counted it as running."""
        series = self.series(labels)
        if running:
            series.running.dec()
        series.requests.inc()
        if error is not None or status >= 400:
            code = str(status) if status else error or "unknown"
            self._child(self.errors, *labels, code).inc()
        series.duration.observe(seconds)
        if stream:
            if ttft_s is not None:
                series.ttft_stream.observe(ttft_s)
        else:
            series.ttft_whole.observe(seconds)
        if prompt_tokens:
            series.input_tokens.observe(prompt_tokens)
        if completion_tokens:
            series.output_tokens.observe(completion_tokens)
            series.ntpot.observe(seconds / completion_tokens)
            if stream and ttft_s is not None and completion_tokens > 1 and seconds > ttft_s:
                series.tpot.observe((seconds - ttft_s) / (completion_tokens - 1))
        if cached_tokens is not None:
            series.cached_tokens.observe(cached_tokens)


class _Series:
    """One label set's children of :class:`EppMetrics`' per-request series (a request
    touches a dozen; one dictionary lookup finds them all)."""

    __slots__ = (
        "cached_tokens",
        "duration",
        "input_tokens",
        "ntpot",
        "output_tokens",
        "requests",
        "running",
        "size",
        "tpot",
        "ttft_stream",
        "ttft_whole",
    )

    def __init__(self, m: EppMetrics, labels: Labels) -> None:
        self.running = m.running.labels(*labels)
        self.requests = m.requests.labels(*labels)
        self.duration = m.duration.labels(*labels)
        self.size = m.request_size.labels(*labels)
        self.input_tokens = m.input_tokens.labels(*labels)
        self.output_tokens = m.output_tokens.labels(*labels)
        self.cached_tokens = m.cached_tokens.labels(*labels)
        self.ntpot = m.ntpot.labels(*labels)
        self.tpot = m.tpot.labels(*labels)
        self.ttft_stream = m.ttft.labels(*labels, "true")
        self.ttft_whole = m.ttft.labels(*labels, "false")


def _mean_stdev(values: Sequence[float]) -> tuple[float, float]:
    """llm-d's pool summary: mean and sample standard deviation (n - 1, at least 1), both
    rounded to two decimals (``pkg/epp/datalayer/logger``)."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    ss = sum((v - mean) ** 2 for v in values)
    return round(mean, 2), round(math.sqrt(ss / max(1, len(values) - 1)), 2)


class EppPoolCollector(Collector):
    """The pool gauges, computed at scrape time from the pool's last scraped metrics."""

    def __init__(self, pool: EndpointPool, pool_name: str) -> None:
        self.pool = pool
        self.pool_name = pool_name

    def collect(self) -> Iterator[Metric]:
        ready = self.pool.candidates()
        name = [self.pool_name]
        kv = _mean_stdev([e.metrics.kv_cache_usage_percent for e in ready])
        queue = _mean_stdev([float(e.metrics.waiting_queue_size) for e in ready])
        running = _mean_stdev([float(e.metrics.running_requests_size) for e in ready])
        rows = [
            ("average_kv_cache_utilization", "average_kv_cache_utilization", kv[0],
             "The average KV-cache utilization over the pool's ready endpoints."),
            ("average_queue_size", "average_queue_size", queue[0],
             "The average number of requests waiting in the model servers' queues."),
            ("average_running_requests", "average_running_requests", running[0],
             "The average number of running requests over the pool's model servers."),
            ("ready_pods", "ready_endpoints", float(len(ready)),
             "The number of ready endpoints in the inference pool."),
        ]  # fmt: skip
        for gie, new, value, text in rows:
            for family in (
                GaugeMetricFamily("inference_pool_" + gie, _deprecated(new, text), labels=["name"]),
                GaugeMetricFamily(LLMD + new, _help(text), labels=["name"]),
            ):
                family.add_metric(name, value)
                yield family
        for new, value, text in (
            ("std_dev_kv_cache_utilization", kv[1], "KV-cache utilization"),
            ("std_dev_queue_size", queue[1], "number of requests waiting in the queues"),
            ("std_dev_running_requests", running[1], "number of running requests"),
        ):
            family = GaugeMetricFamily(
                LLMD + new,
                _help(f"The standard deviation over the pool's ready endpoints of the {text}."),
                labels=["name"],
            )
            family.add_metric(name, value)
            yield family
        per_pod = GaugeMetricFamily(
            "inference_pool_per_pod_queue_size",
            _help("The number of requests waiting in each endpoint's model-server queue."),
            labels=["name", "model_server_pod"],
        )
        per_endpoint = GaugeMetricFamily(
            LLMD + "per_endpoint_queue_size",
            _help("The number of requests waiting in each endpoint's model-server queue."),
            labels=["name", "model_server_endpoint"],
        )
        for endpoint in self.pool.all():
            pod = endpoint_identity(endpoint)[0]
            size = float(endpoint.metrics.waiting_queue_size)
            per_pod.add_metric([self.pool_name, pod], size)
            per_endpoint.add_metric([self.pool_name, pod], size)
        yield per_pod
        yield per_endpoint


class RenamedCollector(Collector):
    """Re-exports another component's families under a second prefix at scrape time (flow
    control's ``inference_extension_flow_control_*`` as llm-d's ``llm_d_epp_flow_control_*``):
    no second set of counts, no cost on the request path."""

    def __init__(self, sources: Sequence[Collector], old_prefix: str, new_prefix: str) -> None:
        self.sources = list(sources)
        self.old_prefix = old_prefix
        self.new_prefix = new_prefix

    def collect(self) -> Iterator[Metric]:
        old, new = self.old_prefix, self.new_prefix
        seen: set[str] = set()
        for source in self.sources:
            for family in source.collect():
                # a cached label child collects as its parent's family: the parent (listed
                # first) already exported every sample
                if not family.name.startswith(old) or family.name in seen:
                    continue
                seen.add(family.name)
                copy = Metric(new + family.name[len(old) :], family.documentation, family.type)
                for s in family.samples:
                    copy.add_sample(new + s.name[len(old) :], s.labels, s.value, s.timestamp)
                yield copy
