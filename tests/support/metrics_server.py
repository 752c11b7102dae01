"""A stand-in model server that only needs to be scraped: /health and /metrics answer with a
real vLLM metrics page (tests that play Envoy, or discovery tests, forward no request)."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from support.procs import free_port

#: Real vLLM 0.32's /metrics page, as captured on CPU.
VLLM_METRICS_PAGE = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()


async def start_metrics_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    page: str = VLLM_METRICS_PAGE,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``page`` on ``host:port`` (a free port when 0); returns the runner and host:port."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=page)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner, f"{host}:{port}"
