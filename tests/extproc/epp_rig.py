"""Shared by the ext_proc server tests: model servers to scrape, a started ``kvgate epp``
(either ``--grpc-server``) and Envoy's messages, built as Envoy builds them.

The model servers only need to be scraped (the tests play Envoy, so no request is
forwarded): small HTTP servers answer /health and /metrics with a real vLLM metrics page.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import ClientSession, web
from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf import struct_pb2

from kvgate.endpoints.static import spec_from_url
from kvgate.extproc.app import EppOptions, EppServer
from support.metrics_server import start_metrics_server
from support.procs import free_port

METRICS_PAGE = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()
FULL_DUPLEX = pm.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = pm.ProcessingMode.BUFFERED


async def model_server() -> tuple[web.AppRunner, str]:
    return await start_metrics_server(page=METRICS_PAGE)


@dataclass
class Epp:
    server: EppServer
    channel: grpc.aio.Channel
    stub: ep_grpc.ExternalProcessorStub
    endpoints: list[str]
    metrics_url: str


async def start_epp(
    grpc_server: str, **options: object
) -> tuple[EppServer, list[web.AppRunner], list[str]]:
    runners, hostports = [], []
    for _ in range(2):
        runner, hp = await model_server()
        runners.append(runner)
        hostports.append(hp)
    opts = EppOptions(
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        endpoints=[spec_from_url(hp) for hp in hostports],
        grpc_server=grpc_server,
        **{"policy": "llm-d-default", **options},  # type: ignore[arg-type]
    )
    server = EppServer(opts)
    await server.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while len(server.pool.candidates()) < 2:
            assert asyncio.get_running_loop().time() < deadline, "endpoints never became healthy"
            await asyncio.sleep(0.02)
    except BaseException:  # a gRPC server left running hangs the test process's exit
        await stop_epp(server, runners, grace_s=0)
        raise
    return server, runners, hostports


async def stop_epp(
    server: EppServer, runners: list[web.AppRunner], *, grace_s: float = 2.0
) -> None:
    """Stop what :func:`start_epp` started: the EPP, then its model servers."""
    await server.stop(grace_s)
    for runner in runners:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def open_epp(grpc_server: str, **options: object) -> AsyncIterator[Epp]:
    """A started EppServer with a client channel to its ext_proc port; stopped at exit."""
    server, runners, hostports = await start_epp(grpc_server, **options)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.opts.grpc_port}")
    try:
        yield Epp(
            server,
            channel,
            ep_grpc.ExternalProcessorStub(channel),
            hostports,
            f"http://127.0.0.1:{server.opts.metrics_port}/metrics",
        )
    finally:
        await channel.close()
        await stop_epp(server, runners)


def headers_msg(
    headers: dict[str, str],
    *,
    end_of_stream: bool = False,
    mode: int = FULL_DUPLEX,
    subset: list[str] | None = None,
) -> ep.ProcessingRequest:
    msg = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
            ),
            end_of_stream=end_of_stream,
        ),
        protocol_config=ep.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode),
    )
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.update({"x-gateway-destination-endpoint-subset": subset})
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return msg


def body_msg(body: bytes, end_of_stream: bool = True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=end_of_stream))


def set_headers(resp: ep.ProcessingResponse) -> dict[str, str]:
    which = resp.WhichOneof("response")
    common = getattr(resp, which).response
    out = {}
    for h in common.header_mutation.set_headers:
        assert h.append_action == core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        out[h.header.key] = h.header.raw_value.decode()
    return out


BASE = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


async def exchange(
    epp: Epp, messages: list[ep.ProcessingRequest], expect: int
) -> tuple[list[ep.ProcessingResponse], grpc.aio.StreamStreamCall]:
    call = epp.stub.Process()
    for msg in messages:
        await call.write(msg)
    replies = [await asyncio.wait_for(call.read(), 5) for _ in range(expect)]
    return replies, call


async def metric(epp: Epp, name: str) -> float:
    async with ClientSession() as s, s.get(epp.metrics_url) as r:
        text = await r.text()
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    )


async def wait_metric(epp: Epp, name: str, value: float, timeout_s: float = 5.0) -> None:
    """Poll /metrics until ``name`` (summed over labels) reaches ``value``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (seen := await metric(epp, name)) != value:
        assert asyncio.get_running_loop().time() < deadline, f"{name} = {seen}, not {value}"
        await asyncio.sleep(0.02)
