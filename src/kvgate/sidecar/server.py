"""``kvgate sidecar``: llm-d's routing sidecar in front of one decode model server.

Deployed as llm-d deploys its ``pd-sidecar``: the pod's serving port is the sidecar's
(``--port``, 8000), the model server listens on ``--model-server-port`` (8001) on loopback,
and Envoy + the EPP (``kvgate epp``) send each request here with ``x-prefiller-host-port``
when the scheduler picked a prefill endpoint. For POSTs to ``/v1/completions`` and
``/v1/chat/completions`` carrying that header the sidecar runs the prefill leg
(:mod:`kvgate.sidecar.legs`), then the decode leg to its model server; every other request
(health, ``/metrics``, ``/v1/models``, inference without the header) passes straight
through. The header never reaches the model server. A client that disconnects cancels the
leg in flight (aiohttp's handler cancellation closes the upstream connection).

E/P/D: with ``--ec-connector`` (llm-d's flag: ``ec-example`` or ``ec-nixl``), a chat request
carrying ``x-encoder-hosts-ports`` first runs the encode leg (:mod:`kvgate.sidecar.encode`),
then the prefill leg if named, then decode. Without the flag the header is dropped and the
encode stage skipped, as llm-d's sidecar does (logged once).

Its own counter ``kvgate_pd_prefill_total{outcome}`` is served on ``--metrics-port`` (llm-d's
flag; 0, the default, serves none): ``/metrics`` on the main port is the model server's, as
the EPP scrapes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from kvgate.gateway.proxy import HOP_BY_HOP, downstream_headers
from kvgate.gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamStreamError
from kvgate.openai.errors import error_body
from kvgate.scheduling.types import HEADER_ENCODERS, HEADER_PREFILLER
from kvgate.sidecar.encode import CHAT_PATH, EncodeLeg, with_ec_params
from kvgate.sidecar.legs import PrefillLeg, decode_body

__all__ = ["Sidecar", "SidecarOptions", "serve"]

log = logging.getLogger("kvgate.sidecar")

INFERENCE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    host: str = "0.0.0.0"
    port: int = 8000
    model_server_host: str = "127.0.0.1"
    model_server_port: int = 8001
    metrics_port: int = 0
    prefill_timeout_s: float = 60.0
    ec_connector: str = ""  # "" (no encode stage), ec-example or ec-nixl


class Sidecar:
    """The handlers; one per process."""

    def __init__(self, opts: SidecarOptions) -> None:
        self.opts = opts
        self.registry = CollectorRegistry(auto_describe=False)
        self.client = UpstreamClient()
        self.leg = PrefillLeg(self.client, self.registry, timeout_s=opts.prefill_timeout_s)
        self.encode_leg = EncodeLeg(self.client, self.registry, timeout_s=opts.prefill_timeout_s)
        self._warned_no_ec = False
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        await self.client.close()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return await self._post(request)
        return await self._pass_through(request)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        payload = await request.read()
        headers = {
            k.lower(): v
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length")
        }
        prefiller = headers.pop(HEADER_PREFILLER, None)
        encoders = headers.pop(HEADER_ENCODERS, None)
        if encoders and request.path == CHAT_PATH:
            payload = await self._encode(encoders, headers, payload)
        if prefiller and request.path in INFERENCE_PATHS:
            payload = await self._prefill(request, prefiller, headers, payload)
        opts = self.opts
        try:
            upstream = await self.client.post(
                opts.model_server_host,
                opts.model_server_port,
                request.path_qs,
                headers.items(),
                payload,
            )
        except (UpstreamConnectError, UpstreamStreamError) as exc:
            return web.Response(
                status=502,
                body=error_body(f"model server unreachable: {exc}", status=502),
                content_type="application/json",
            )
        try:
            resp = web.StreamResponse(
                status=upstream.status, headers=downstream_headers(upstream.headers)
            )
            await resp.prepare(request)
            with contextlib.suppress(ConnectionResetError, UpstreamStreamError):
                async for chunk in upstream.iter_chunks():
                    await resp.write(chunk)
                await resp.write_eof()
            return resp
        finally:
            upstream.release()

    async def _encode(self, encoders: str, headers: dict[str, str], payload: bytes) -> bytes:
        if not self.opts.ec_connector:
            if not self._warned_no_ec:
                self._warned_no_ec = True
                log.warning("x-encoder-hosts-ports received without --ec-connector: no encode leg")
            return payload
        try:
            body = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return payload
        if not isinstance(body, dict):
            return payload
        params = await self.encode_leg.run(
            encoders,
            headers.items(),
            body,
            collect=self.opts.ec_connector == "ec-nixl",
            request_id=headers.get("x-request-id", ""),
        )
        return payload if params is None else msgspec.json.encode(with_ec_params(body, params))

    async def _prefill(
        self, request: web.Request, prefiller: str, headers: dict[str, str], payload: bytes
    ) -> bytes:
        try:
            body = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return payload  # the model server answers the client's broken body itself
        if not isinstance(body, dict):
            return payload
        params = await self.leg.run(
            prefiller,
            request.path_qs,
            headers.items(),
            body,
            chat=request.path == "/v1/chat/completions",
            request_id=headers.get("x-request-id", ""),
        )
        return payload if params is None else msgspec.json.encode(decode_body(body, params))

    async def _pass_through(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        opts = self.opts
        url = f"http://{opts.model_server_host}:{opts.model_server_port}{request.path_qs}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("Host", None)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=await request.read() or None
            ) as upstream:
                data = await upstream.read()
                return web.Response(
                    status=upstream.status,
                    body=data,
                    headers=downstream_headers(upstream.headers.items()),
                )
        except aiohttp.ClientError as exc:
            return web.Response(
                status=502,
                body=error_body(f"model server unreachable: {exc}", status=502),
                content_type="application/json",
            )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


async def serve(opts: SidecarOptions, *, ready: asyncio.Event | None = None) -> None:
    """Run until cancelled."""
    sidecar = Sidecar(opts)
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", sidecar.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, opts.host, opts.port).start()
    metrics_runner: web.AppRunner | None = None
    if opts.metrics_port:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", sidecar.metrics)
        metrics_runner = web.AppRunner(metrics_app, access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, opts.host, opts.metrics_port).start()
    log.info(
        "kvgate sidecar on %s:%d in front of %s:%d",
        opts.host,
        opts.port,
        opts.model_server_host,
        opts.model_server_port,
    )
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await sidecar.close()
