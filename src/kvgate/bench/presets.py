"""What ``kvgate bench compare`` runs without options, and with ``--engine vllm``, ``--scale``
or ``--workload multi-tenant``. Flags given on the command line override these; ``-W``
entries are merged into the workload's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Preset:
    engine: str
    replicas: int
    model: str
    profile: str | None
    block_size: int | None
    num_gpu_blocks: int | None
    kv_cache_bytes: int | None
    workload: str
    workload_params: Mapping[str, Any]
    rates: tuple[float, ...]
    arrival: str = "poisson"
    stage_duration_s: float | None = None
    num_requests: int | None = None
    duration_s: float | None = None
    sim_args: tuple[str, ...] = ()
    cycle: bool = False
    speed: float = 1.0
    max_model_len: int | None = None
    policies: tuple[str, ...] | None = None  # None: compare.DEFAULT_POLICIES
    stream_interval: int = 1  # tokens per streamed chunk (RunConfig.stream_interval)
    prefill_replicas: int | None = None  # ``pd`` policies (None: half the replicas)
    kv_link: str = "rdma"  # ``pd`` policies: the simulated KV link
    cpu_offload_blocks: int | None = None  # ``+cpu-tier`` policies: CPU tier per replica
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # 24 groups x 4000-token system prompts (96k tokens of prefixes) against replicas
    # holding 2000 blocks x 16 = 32k tokens each: the working set is 3x one replica's cache
    # and 75% of the cluster's, as in llm-d's sizing, and one prompt is an eighth of a
    # replica's cache. One warm-up prompt per group is sent first and not measured, so p90
    # measures steady state rather than first-time misses. The simulator runs 20x slower
    # than the modelled H100 and figures are reported in model time (docs/bench.md), so
    # the processes' own CPU work (tokenizing 4k-token prompts) stays small beside it.
    "default": Preset(
        engine="sim",
        replicas=4,
        model="Qwen/Qwen3-0.6B",
        profile="qwen3-0.6b-h100",
        block_size=16,
        num_gpu_blocks=2000,
        kv_cache_bytes=None,
        workload="shared-prefix",
        workload_params={
            "num_groups": 24,
            "prompts_per_group": 4,
            "warmup_per_group": 1,
            "system_prompt_len": 4000,
            "question_len": 100,
            "output_len": 32,
        },
        # the knee: round-robin's replicas are busy enough to queue, prefix-aware ones not
        rates=(130.0,),
        speed=0.05,
    ),
    # Two real vLLM replicas of SmolLM2-135M on CPU (one core each) with small KV caches
    # per replica so that the shared prefixes do not fit one replica.
    "vllm": Preset(
        engine="vllm",
        replicas=2,
        model="builtin",
        profile=None,
        block_size=32,
        num_gpu_blocks=None,
        # SmolLM2-135M: 23,040 bytes per token, so 120 MiB hold 170 blocks of 32 = 5,440
        # tokens: 5 of the 8 groups' prefixes; the two replicas hold 10.
        kv_cache_bytes=120 * 1024 * 1024,
        workload="shared-prefix",
        # One unmeasured warm-up prompt per group (as in the default), so that TTFT p90
        # measures steady state and not the 1-in-N first prompts every policy must compute.
        workload_params={
            "num_groups": 8,
            "prompts_per_group": 8,
            "warmup_per_group": 1,
            "system_prompt_len": 1024,
            "question_len": 32,
            "output_len": 16,
        },
        # ~0.5 s per uncached 1,056-token prefill on one AVX-512 core: at 1 req/s a replica
        # that misses half the time queues, one that hits does not.
        rates=(1.0,),
        # vLLM refuses to start when one max-length request does not fit the KV cache
        max_model_len=2048,
        policies=("round-robin", "llm-d-default", "precise"),
    ),
    # llm-d's published shape (blog 2025-09-24): 8 pods, 150 groups x 5 prompts,
    # 6000 / 1200 / 1000 tokens, Poisson 3 -> 60 QPS.
    "scale": Preset(
        engine="sim",
        replicas=8,
        model="meta-llama/Llama-3.1-8B-Instruct",
        profile="llama-3.1-8b-h100",
        block_size=16,
        # llm-d sized the prefixes at ~73% of the cluster's KV cache: 900k prefix tokens over
        # 8 x 9600 blocks x 16 = 1.23M tokens (the profile's own 25,650 blocks would hold
        # them 3.6 times over)
        num_gpu_blocks=9600,
        kv_cache_bytes=None,
        workload="shared-prefix",
        workload_params={
            "num_groups": 150,
            "prompts_per_group": 5,
            "system_prompt_len": 6000,
            "question_len": 1200,
            "output_len": 1000,
        },
        rates=(
            3.0,
            10.0,
            15.0,
            20.0,
            22.0,
            25.0,
            30.0,
            35.0,
            40.0,
            43.0,
            46.0,
            49.0,
            52.0,
            55.0,
            57.0,
            60.0,
        ),
        stage_duration_s=20.0,
        cycle=True,
        # 10 tokens a streamed chunk (vLLM's stream_interval): 11,000 requests x 1,000 tokens
        # per policy would otherwise cost the gateway and the load generator ~100 us of CPU
        # per token, more than 2 cores give at real time; TTFT is unaffected
        stream_interval=10,
    ),
    # Flow control's benchmark (docs/bench.md, "multi-tenant"): 4 simulated H100 replicas of
    # Qwen3-0.6B with the profile's full KV cache; an interactive tenant (128 tokens in, 32
    # out, 4 req/s) beside a batch tenant (2048 in, 256 out) offered at 3x the pool's
    # estimated capacity (~35 req/s, kvgate.bench.capacity) for 30 s of model time. The
    # simulator runs at a fifth of real time (~21 batch arrivals per wall second) and
    # streams 10 tokens a chunk, so two cores keep up; the client's --request-timeout
    # (300 s wall) is 60 s of model time.
    "multi-tenant": Preset(
        engine="sim",
        replicas=4,
        model="Qwen/Qwen3-0.6B",
        profile="qwen3-0.6b-h100",
        block_size=16,
        num_gpu_blocks=None,
        kv_cache_bytes=None,
        workload="multi-tenant",
        workload_params={"duration_s": 30.0},
        rates=(1.0,),  # unused: the workload carries its arrival times
        speed=0.2,
        policies=("llm-d-default", "llm-d-default+flow-control"),
        stream_interval=10,
    ),
    # P/D where it pays (docs/bench.md, "P/D and the CPU tier"): 4 simulated H100 replicas of
    # Qwen3-0.6B, aggregated (llm-d-default) against 2 prefill + 2 decode (pd) at the same
    # replica count. 8000-token distinct prompts, 200 tokens out, 16 req/s: an aggregated
    # replica runs a ~55 ms prefill step 4 times a second and every request decoding on it
    # waits that step (~2 % of the gaps, so ITL p99 is a prefill step); a decode replica's
    # slowest steps admit pulled prompts (~11 ms of attention over the 8000 cached tokens on
    # a ~12 ms decode step). At 10 req/s the stalls are under 1 % of the gaps and P/D's
    # admissions make its p99 the higher one. The simulator runs at a quarter of real time
    # (4 arrivals and ~3,200 streamed tokens per wall second), 800 requests: ~4 min of wall
    # time per policy.
    "long-prompt": Preset(
        engine="sim",
        replicas=4,
        model="Qwen/Qwen3-0.6B",
        profile="qwen3-0.6b-h100",
        block_size=16,
        num_gpu_blocks=None,
        kv_cache_bytes=None,
        workload="long-prompt",
        workload_params={"num_requests": 800},
        rates=(16.0,),
        speed=0.25,
        policies=("llm-d-default", "pd"),
    ),
    # P/D where it does not pay: 128 tokens in, 200 out, 20 req/s on the same 4 replicas.
    # Prefill is cheap, so splitting the replicas halves decode capacity for nothing: the
    # two decode replicas carry the batch four replicas carried.
    "short-prompt": Preset(
        engine="sim",
        replicas=4,
        model="Qwen/Qwen3-0.6B",
        profile="qwen3-0.6b-h100",
        block_size=16,
        num_gpu_blocks=None,
        kv_cache_bytes=None,
        workload="short-prompt",
        workload_params={"num_requests": 1200},
        rates=(20.0,),
        speed=0.25,
        policies=("llm-d-default", "pd"),
    ),
    # The CPU tier under memory pressure: 32 groups x 4000-token prefixes (128k tokens)
    # against 4 replicas of 1500 GPU blocks x 16 = 24k tokens (96k in the cluster), so
    # prefixes are evicted between reuses; +cpu-tier adds 4000 CPU blocks (64k tokens) a
    # replica, which holds them all. Each routing (approximate, precise) with and without.
    "memory-pressure": Preset(
        engine="sim",
        replicas=4,
        model="Qwen/Qwen3-0.6B",
        profile="qwen3-0.6b-h100",
        block_size=16,
        num_gpu_blocks=1500,
        kv_cache_bytes=None,
        workload="memory-pressure",
        workload_params={},
        rates=(40.0,),
        speed=0.1,
        cpu_offload_blocks=4000,
        policies=("llm-d-default", "llm-d-default+cpu-tier", "precise", "precise+cpu-tier"),
    ),
}
