"""Metrics parsing on a real vLLM page, and the scraper's rotation against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.endpoints.scrape import MetricNames, MetricSpec, Scraper, parse_metrics

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm-cpu-metrics.txt"


def test_parse_real_vllm_page() -> None:
    m = parse_metrics(DATA.read_text(), now=5.0)
    assert m.waiting_queue_size == 0
    assert m.running_requests_size == 0
    assert m.cache_block_size == 32
    assert m.cache_num_gpu_blocks == 2912
    assert m.prefix_cache_queries == 9344.0
    assert m.prefix_cache_hits == 6080.0
    assert m.updated_at == 5.0


PAGE = """# HELP vllm:num_requests_waiting x
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 3.0
vllm:num_requests_waiting{engine="1",model_name="a"} 4.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
vllm:num_requests_running{model_name="a"} 2
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
vllm:lora_requests_info{max_lora="4",running_lora_adapters="x,y",waiting_lora_adapters=""} 100.0
vllm:lora_requests_info{max_lora="4",running_lora_adapters="z",waiting_lora_adapters="w"} 200.0
"""


def test_sums_series_falls_back_and_picks_latest_lora() -> None:
    m = parse_metrics(PAGE)
    assert m.waiting_queue_size == 7  # two engines summed, _by_reason ignored
    assert m.running_requests_size == 2
    assert m.kv_cache_usage_percent == 0.25  # legacy gpu_cache_usage_perc
    assert m.active_models == frozenset({"z"})  # series with the max value
    assert m.waiting_models == frozenset({"w"})
    assert m.max_active_models == 4


def test_label_filter_and_flags() -> None:
    spec = MetricSpec.parse('vllm:num_requests_waiting{engine="1"}')
    assert spec.labels == (("engine", "1"),)
    names = MetricNames.from_flags(queued=str(spec), kv_usage="vllm:kv_cache_usage_perc")
    m = parse_metrics(PAGE, names)
    assert m.waiting_queue_size == 4
    assert m.kv_cache_usage_percent == 0.0  # explicit name: no fallback to the legacy one
    with pytest.raises(ValueError):
        MetricSpec.parse('vllm:x{engine="1"')


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def test_scraper_rotation_follows_health() -> None:
    state = {"healthy": True}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=PAGE)

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if state["healthy"] else 503)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m1"}, {"id": "lora-a"}]})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    runner, port = await _serve(app)
    pool = EndpointPool()
    pool.upsert(EndpointSpec("r1", "127.0.0.1", port))
    scraper = Scraper(pool, interval_s=0.02, health_interval_s=0.05)
    await scraper.start()
    try:
        await _until(lambda: pool.is_healthy("r1"))
        assert pool.get("r1").metrics.waiting_queue_size == 7  # type: ignore[union-attr]
        await _until(lambda: scraper.models_of("r1") == frozenset({"m1", "lora-a"}))
        state["healthy"] = False
        await _until(lambda: not pool.is_healthy("r1"))
        state["healthy"] = True
        await _until(lambda: pool.is_healthy("r1"))
        # added at run time: gets a task; removed: loses it
        pool.upsert(EndpointSpec("r2", "127.0.0.1", port))
        await _until(lambda: pool.is_healthy("r2"))
        pool.remove(["r2"])
        assert scraper.models_of("r2") is None
        # server gone: refused connections take it out quickly
        await runner.cleanup()
        await _until(lambda: not pool.is_healthy("r1"))
    finally:
        await scraper.stop()
        await runner.cleanup()
