"""``/metrics`` of the simulator: vLLM 0.32's ``vllm:`` names, types, labels and HELP texts.

Gauges and counters are read from the engine at scrape time (a custom collector, so the
hot path only bumps plain ints); histograms are prometheus_client ``Histogram``s observed
when a request finishes. Every series carries ``engine="0",model_name=<served name>`` and
counters carry their ``*_created`` gauge, as vLLM's prometheus_client output does. Latency
histograms are in modelled seconds (wall seconds × ``--speed``).

One family is kvgate's own, not vLLM's: ``kvgate_sim_schedule_lag_seconds``, a histogram of
the wall seconds by which the engine restarted its modelled schedule late (the process could
not keep up: CPU starved or its event loop blocked). Its ``_sum`` rising means the replica's
latencies are no longer the model's, so a benchmark should reject the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvgate.sim.exposition import FastHistogram, HistogramCollector, render_text

if TYPE_CHECKING:
    from kvgate.sim.engine import Engine, SimRequest

__all__ = ["SimMetrics"]


TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_TIME_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                        50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
#: Schedule restarts are at least the engine's lag tolerance (5 ms).
SCHEDULE_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


class _EngineCollector(Collector):
    def __init__(self, owner: SimMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        return self.owner.collect_state()


class SimMetrics:
    """The registry of one simulator process."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        *,
        cache_config: dict[str, str],
        legacy_gpu_cache_usage: bool = False,
        max_loras: int = 0,
        lora_names: tuple[str, ...] = (),
        lora_enabled: bool = False,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.cache_config = cache_config
        self.legacy_gpu_cache_usage = legacy_gpu_cache_usage
        self.max_loras = max_loras
        self.lora_names = lora_names
        self.lora_enabled = lora_enabled or bool(lora_names)
        self.created = time.time()
        #: kvgate.sim.encoder's counts by source (set by SimState; empty until then)
        self.encoder_counts: dict[str, int] = {}
        self._label_cache: dict[tuple[tuple[str, str], ...], str] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        collector = _EngineCollector(self)
        self.registry.register(collector)
        self._state_registry = CollectorRegistry(auto_describe=False)
        self._state_registry.register(collector)
        speed = engine.config.speed
        self.speed = speed

        self.histograms: list[FastHistogram] = []

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> FastHistogram:
            h = FastHistogram(
                name, doc, buckets, {"engine": "0", "model_name": model_name}, self.created
            )
            self.histograms.append(h)
            return h

        self.h_prompt = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS
        )
        self.h_generation = hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            TOKEN_BUCKETS,
        )
        self.h_iteration = hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_BUCKETS,
        )
        self.h_max_gen = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            TOKEN_BUCKETS,
        )
        self.h_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.h_max_tokens = hist(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            TOKEN_BUCKETS,
        )
        self.h_ttft = hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.h_itl = hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.h_tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.h_e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_TIME_BUCKETS,
        )
        self.h_queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.h_inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.h_prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.h_decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.h_preemptions = hist(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTION_BUCKETS,
        )
        self.h_kv_computed = hist("vllm:request_prefill_kv_computed_tokens", "Histogram of new KV tokens computed during prefill (excluding cached tokens).", TOKEN_BUCKETS)  # fmt: skip
        self.h_schedule_lag = hist(
            "kvgate_sim_schedule_lag_seconds",
            "Wall seconds by which the simulated engine restarted its modelled schedule late "
            "(the process fell behind; kvgate sim only, not a vLLM metric).",
            SCHEDULE_LAG_BUCKETS,
        )
        self.registry.register(HistogramCollector(self.histograms))
        engine.on_finish = self.observe_finished
        engine.on_step = self.observe_step
        engine.on_lag = self.h_schedule_lag.observe

    # --- per request -----------------------------------------------------------------------

    def observe_admitted(self, max_tokens: int | None, max_gen: int) -> None:
        self.h_n.observe(1)
        if max_tokens is not None:
            self.h_max_tokens.observe(max_tokens)
        self.h_max_gen.observe(max_gen)

    def observe_finished(self, req: SimRequest) -> None:
        if req.finish_reason == "abort" and req.num_output_tokens == 0:
            return  # vLLM records no latency stats for requests aborted before output
        speed = self.speed
        self.h_prompt.observe(req.num_prompt_tokens)
        self.h_generation.observe(req.num_output_tokens)
        self.h_preemptions.observe(req.num_preemptions)
        cached = max(req.num_cached_tokens, 0)
        self.h_kv_computed.observe(req.num_prompt_tokens - cached)
        if req.num_output_tokens == 0:
            return
        # vLLM's semantics: TTFT and e2e count from the HTTP receipt (arrival_time), the queue
        # time from the engine's receipt (queued_time) to the first scheduled step, which
        # starts before it when an idle engine absorbed the intake (then 0).
        queued = max(0.0, req.first_scheduled_time - req.queued_time) * speed
        ttft = (req.first_token_time - req.arrival_time) * speed
        e2e = (req.finished_time - req.arrival_time) * speed
        prefill = (req.first_token_time - req.first_scheduled_time) * speed
        decode = (req.last_token_time - req.first_token_time) * speed
        self.h_queue.observe(queued)
        self.h_ttft.observe(ttft)
        self.h_e2e.observe(e2e)
        self.h_prefill.observe(prefill)
        self.h_decode.observe(decode)
        self.h_inference.observe(prefill + decode)
        if req.num_output_tokens > 1:
            tpot = decode / (req.num_output_tokens - 1)
            self.h_tpot.observe(tpot)

    def observe_step(self, num_tokens: int, inter_token_s: list[float]) -> None:
        self.h_iteration.observe(num_tokens)
        speed = self.speed
        observe = self.h_itl.observe
        for wall_s in inter_token_s:
            observe(wall_s * speed)

    def render(self) -> bytes:
        """The /metrics body; equal to ``generate_latest(self.registry)``, much cheaper."""
        head = render_text(self._state_registry, self._label_cache)
        return head + "".join([h.render() for h in self.histograms]).encode("utf-8")

    # --- scrape-time state -----------------------------------------------------------------

    def collect_state(self) -> Iterator[Metric]:
        engine = self.engine
        st = engine.stats
        labels = ["engine", "model_name"]
        values = ["0", self.model_name]
        created = self.created

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(name, doc, labels=labels, created=created)
            c.add_metric(values, value, created=created)
            return c

        # Counters vLLM 0.32 exports that the simulator has nothing to count for (always 0).
        yield counter(
            "vllm:estimated_flops_per_gpu",
            "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
            0,
        )
        yield counter(
            "vllm:estimated_read_bytes_per_gpu",
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
            0,
        )
        yield counter(
            "vllm:estimated_write_bytes_per_gpu",
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
            0,
        )
        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            engine.num_running,
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            engine.num_waiting,
        )
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            labels=[*labels, "reason"],
        )
        by_reason.add_metric([*values, "capacity"], engine.num_waiting)
        by_reason.add_metric([*values, "deferred"], 0)
        yield by_reason
        sleep = GaugeMetricFamily(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            labels=[*labels, "sleep_state"],
        )
        sleep.add_metric([*values, "awake"], 1)
        sleep.add_metric([*values, "weights_offloaded"], 0)
        sleep.add_metric([*values, "discard_all"], 0)
        yield sleep
        usage = engine.kv.usage()
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        if self.legacy_gpu_cache_usage:
            yield gauge(
                "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", usage
            )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            st.prefix_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            st.prefix_hits,
        )
        yield counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
            st.prompt_tokens_transferred,
        )
        yield counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
            st.prompt_tokens_transferred,
        )
        mm = self.encoder_counts
        yield counter(
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
            sum(mm.values()),
        )
        yield counter(
            "vllm:mm_cache_hits",
            "Multi-modal cache hits, in terms of number of cached items.",
            mm.get("encoder_cache", 0),
        )
        items = CounterMetricFamily(
            "kvgate_sim_mm_items",
            "Multimodal parts made ready, by source (kvgate.sim.encoder)",
            labels=[*labels, "source"],
            created=created,
        )
        for source, value in mm.items():
            items.add_metric([*values, source], value, created=created)
        yield items
        yield counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            st.preemptions,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens)
        src = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            labels=[*labels, "source"],
            created=created,
        )
        for source, value in (
            ("local_compute", st.prompt_tokens_computed),
            ("local_cache_hit", st.prompt_tokens_cached_gpu + st.prompt_tokens_cached_cpu),
            ("external_kv_transfer", st.prompt_tokens_transferred),
        ):
            src.add_metric([*values, source], value, created=created)
        yield src
        cached_total = (
            st.prompt_tokens_cached_gpu + st.prompt_tokens_cached_cpu + st.prompt_tokens_transferred
        )
        yield counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            cached_total,
        )
        tier = CounterMetricFamily(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
            labels=[*labels, "source"],
            created=created,
        )
        for source, value in (
            ("device", st.prompt_tokens_cached_gpu),
            ("host", st.prompt_tokens_cached_cpu),
            ("p2p", st.prompt_tokens_transferred),
            ("disk", 0),
            ("external_unspecified", 0),
        ):
            tier.add_metric([*values, source], value, created=created)
        yield tier
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", st.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["engine", "finished_reason", "model_name"],
            created=created,
        )
        for reason in ("stop", "length", "abort", "error", "repetition"):
            success.add_metric(
                ["0", reason, self.model_name], st.finished.get(reason, 0), created=created
            )
        yield success
        rejections = CounterMetricFamily(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            labels=["model_name", "reason"],
            created=created,
        )
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejections.add_metric([self.model_name, reason], 0, created=created)
        yield rejections
        if self.lora_enabled:
            running = sorted({r.lora.name for r in engine.running if r.lora is not None})
            waiting = sorted({r.lora.name for r in engine.waiting if r.lora is not None})
            lora = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            lora.add_metric(
                [str(self.max_loras), ",".join(running), ",".join(waiting)], time.time()
            )
            yield lora
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*sorted(self.cache_config), "engine"],
        )
        info.add_metric([*(self.cache_config[k] for k in sorted(self.cache_config)), "0"], 1.0)
        yield info
