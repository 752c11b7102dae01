"""/metrics parsed with prometheus_client's parser: names, types, labels, and counts that
match the requests sent."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.procs import Proc
from support.sim import SimHandle, start_sim


def scrape(sim: SimHandle) -> dict[str, Any]:
    with urllib.request.urlopen(sim.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    fam = families[name]
    for s in fam.samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{sample or name} {labels}")


@pytest.fixture(scope="module")
def sim(module_spawn: Callable[..., Proc]) -> SimHandle:
    return start_sim(
        module_spawn,
        "--lora-modules", "sql=/adapters/sql", "chat=/adapters/chat",
        "--legacy-gpu-cache-usage-metric",
        model="base",
        speed=50,
        max_loras=2,
    )  # fmt: skip


def test_metrics_match_the_requests_sent(sim: SimHandle) -> None:
    before = scrape(sim)
    assert value(before, "vllm:kv_cache_usage_perc", engine="0", model_name="base") == 0.0
    client = openai.OpenAI(base_url=sim.base_url, api_key="none")
    prompt = "The quick brown fox jumps over the lazy dog. " * 12
    usages = []
    for model in ("base", "base", "sql", "base"):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=5)
        assert r.usage is not None
        usages.append(r.usage)
    r2 = client.completions.create(
        model="base", prompt=prompt, max_tokens=3, stop=None, extra_body={"ignore_eos": True}
    )
    assert r2.usage is not None
    usages.append(r2.usage)
    after = scrape(sim)
    n = len(usages)
    prompt_tokens = sum(u.prompt_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details)
    generated = sum(u.completion_tokens for u in usages)

    def delta(name: str, sample: str | None = None, **labels: str) -> float:
        labels = {"engine": "0", "model_name": "base", **labels}
        return value(after, name, sample, **labels) - value(before, name, sample, **labels)

    assert (
        delta("vllm:request_success", "vllm:request_success_total", finished_reason="length") == n
    )
    assert delta("vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt_tokens
    assert delta("vllm:generation_tokens", "vllm:generation_tokens_total") == generated
    assert delta("vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == prompt_tokens
    assert delta("vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == cached
    # base hits base's blocks; the LoRA request hashes with its adapter name and misses.
    assert [u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details] == [
        0, (usages[0].prompt_tokens - 1) // 16 * 16, 0, (usages[0].prompt_tokens - 1) // 16 * 16,
        (usages[0].prompt_tokens - 1) // 16 * 16,
    ]  # fmt: skip
    assert delta("vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == n
    assert delta("vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == n
    assert delta("vllm:request_queue_time_seconds", "vllm:request_queue_time_seconds_count") == n
    assert (
        delta("vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count")
        == generated - n
    )
    assert value(after, "vllm:kv_cache_usage_perc", engine="0", model_name="base") == 0.0
    assert value(after, "vllm:gpu_cache_usage_perc", engine="0", model_name="base") == 0.0
    assert value(after, "vllm:num_requests_running", engine="0", model_name="base") == 0


def test_types_and_labels_follow_vllm(sim: SimHandle) -> None:
    fams = scrape(sim)
    types = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
        "vllm:cache_config_info": "gauge",
        "vllm:lora_requests_info": "gauge",
    }
    for name, kind in types.items():
        assert fams[name].type == kind, name
    info = fams["vllm:cache_config_info"].samples[0].labels
    assert info["block_size"] == "16" and info["num_gpu_blocks"] == "37246"
    assert info["prefix_caching_hash_algo"] == "sha256" and info["enable_prefix_caching"] == "True"
    lora = fams["vllm:lora_requests_info"].samples[0].labels
    assert lora == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    reasons = {
        s.labels["finished_reason"]
        for s in fams["vllm:request_success"].samples
        if s.name.endswith("_total")
    }
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    # Every vllm: series but the cache/lora info and admission rejections (as in vLLM 0.32)
    # carries engine and model_name.
    for fam in fams.values():
        if fam.name.startswith("vllm:") and not fam.name.startswith(
            ("vllm:cache_config_info", "vllm:lora_requests_info", "vllm:admission_rejections")
        ):
            for s in fam.samples:
                assert s.labels.get("engine") == "0" and s.labels.get("model_name") == "base", s
    with urllib.request.urlopen(sim.base_url + "/models", timeout=5) as resp:
        import json

        cards = json.loads(resp.read())["data"]
    assert [(c["id"], c["parent"]) for c in cards] == [
        ("base", None),
        ("sql", "base"),
        ("chat", "base"),
    ]


def test_fast_render_is_exactly_prometheus_clients_text() -> None:
    import asyncio

    from prometheus_client import generate_latest

    from kvgate.sim.profiles import load_profile
    from kvgate.sim.server import SimSettings, SimState

    async def build() -> bytes:
        settings = SimSettings(
            host="127.0.0.1", port=1, model="m", served_model_names=["m"],
            profile=load_profile("qwen3-0.6b-h100"), legacy_gpu_cache_usage_metric=True,
        )  # fmt: skip
        state = SimState(settings)
        m = state.metrics
        for i in range(50):
            m.h_ttft.observe(i * 0.013)
            m.h_prompt.observe(i * 97)
        m.h_itl.observe(1e9)
        assert m.render() == generate_latest(m.registry)
        return m.render()

    text = asyncio.run(build()).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ttft = fams["vllm:time_to_first_token_seconds"]
    assert next(s.value for s in ttft.samples if s.name.endswith("_count")) == 50


def test_every_vllm_family_of_the_reference_page_is_exported() -> None:
    """Names, types, label names and HELP texts of tests/data/vllm-cpu-metrics.txt (a real
    vLLM 0.32 /metrics page) all appear in the simulator's /metrics."""
    import asyncio
    from pathlib import Path

    from kvgate.sim.profiles import load_profile
    from kvgate.sim.server import SimSettings, SimState

    reference = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()
    real = {
        f.name: f for f in text_string_to_metric_families(reference) if f.name.startswith("vllm:")
    }

    async def render() -> str:
        settings = SimSettings(
            host="127.0.0.1", port=1, model="m", served_model_names=["smollm2"],
            profile=load_profile("qwen3-0.6b-h100"),
        )  # fmt: skip
        return SimState(settings).metrics.render().decode()

    text = asyncio.run(render())
    # Each family once: Prometheus' own text parser (Go expfmt, as llm-d's endpoint picker
    # uses) rejects a page with a second HELP or TYPE line for a name.
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(help_lines) == len(set(help_lines))
    sim = {f.name: f for f in text_string_to_metric_families(text)}
    problems = []
    for name, fam in real.items():
        if name not in sim:
            problems.append(f"{name}: missing")
            continue
        labels = {k for s in fam.samples for k in s.labels if k != "le"}
        sim_labels = {k for s in sim[name].samples for k in s.labels if k != "le"}
        if (fam.type, labels, fam.documentation) != (
            sim[name].type,
            sim_labels,
            sim[name].documentation,
        ):
            problems.append(
                f"{name}: {fam.type} {sorted(labels)} vs {sim[name].type} {sorted(sim_labels)}"
            )
    assert not problems, "\n".join(problems)
