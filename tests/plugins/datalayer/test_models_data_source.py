"""models-data-source: its path, scheme and interval configure the scraper's /v1/models poll."""

from __future__ import annotations

import asyncio
import functools
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from kvgate.config import load_picker_config
from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.endpoints.scrape import Scraper
from kvgate.errors import PluginParameterError
from kvgate.extproc.tls import self_signed
from plugins.kit import make
from support.procs import free_port

TEXT = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: models-data-source
  parameters: {path: /custom/models, interval: 100ms}
- type: models-data-extractor
dataLayer:
  sources:
  - pluginRef: models-data-source
    extractors:
    - pluginRef: models-data-extractor
"""


async def test_the_scraper_polls_the_configured_path_at_the_interval() -> None:
    hits: list[str] = []

    async def models(req: web.Request) -> web.Response:
        hits.append(req.path)
        return web.json_response({"object": "list", "data": [{"id": "m1", "parent": "base"}]})

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/custom/models", models)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = load_picker_config(text=TEXT)
    assert config.data_layer is not None
    kwargs = config.data_layer.scraper_kwargs()
    assert (kwargs["models_path"], kwargs["models_interval_s"]) == ("/custom/models", 0.1)
    pool = EndpointPool()
    pool.upsert(EndpointSpec("r1", "127.0.0.1", port))
    scraper = Scraper(pool, interval_s=0.02, **kwargs)
    await scraper.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4
        while len(hits) < 4:  # every 100 ms: kvgate's own default polls once per 5 s
            assert loop.time() < deadline, hits
            await asyncio.sleep(0.02)
        assert scraper.models_of("r1") == frozenset({"m1"})
        assert set(hits) == {"/custom/models"}
    finally:
        await scraper.stop()
        await runner.cleanup()


async def test_tls_parameters_act(tmp_path: Path) -> None:
    """https with insecureSkipVerify false: the listing is read only when caCertPath trusts
    the server's certificate (the health probe, not under test, skips verification)."""
    cert, key = self_signed()
    (tmp_path / "ms.crt").write_bytes(cert)
    (tmp_path / "ms.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "ms.crt", tmp_path / "ms.key")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m1"}]})

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    trust = f", caCertPath: {tmp_path / 'ms.crt'}"
    try:
        for name, extra in (("trusted", trust), ("untrusted", "")):
            text = TEXT.replace(
                "{path: /custom/models, interval: 100ms}",
                "{scheme: https, insecureSkipVerify: false" + extra + "}",
            )
            config = load_picker_config(text=text)
            assert config.data_layer is not None
            pool = EndpointPool()
            pool.upsert(EndpointSpec(name, "127.0.0.1", port, scheme="https"))
            kwargs = config.data_layer.scraper_kwargs()
            scraper = Scraper(pool, 0.02, verify_tls=False, collect_metrics=False, **kwargs)
            await scraper.start()
            try:
                await _until(functools.partial(pool.is_healthy, name))
                # the tick that made it healthy has fetched the listing (or failed to)
                expected = frozenset({"m1"}) if name == "trusted" else None
                assert scraper.models_of(name) == expected, name
            finally:
                await scraper.stop()
    finally:
        await runner.cleanup()


async def _until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


def test_parameters_follow_llm_d() -> None:
    src = make("models-data-source", {"scheme": "https", "insecureSkipVerify": False})
    assert (src.settings.path, src.settings.scheme, src.settings.insecure_skip_verify) == (
        "/v1/models",
        "https",
        False,
    )
    with pytest.raises(PluginParameterError):
        make("models-data-source", {"port": 8000})  # llm-d's models source has no port
