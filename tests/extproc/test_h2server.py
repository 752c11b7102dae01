"""``kvgate epp --grpc-server h2``: what only the h2 server does, with grpcio's client as peer.

What both servers share (the ext_proc exchange, TLS, stream outcomes, unknown methods,
clients that vanish, a graceful stop) is tested against both in test_server.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from prometheus_client import generate_latest

from extproc.epp_rig import BASE, Epp, body_msg, headers_msg, open_epp, set_headers
from kvgate.errors import KvgateError
from kvgate.extproc.h2server import PROCESS_PATH, H2ExtProcServer
from kvgate.extproc.stream import RequestStream


@pytest.fixture
async def epp() -> AsyncIterator[Epp]:
    async with open_epp("h2") as running:
        yield running


def streams_total(epp: Epp, outcome: str) -> float:
    """kvgate_epp_streams_total{outcome} read from the registry (works after stop())."""
    text = generate_latest(epp.server.metrics.registry).decode()
    m = re.search(rf'^kvgate_epp_streams_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def rpc_error(call: grpc.aio.StreamStreamCall) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), 5)
    return err.value.code()


async def test_a_compressed_message_is_refused(epp: Epp) -> None:
    """Envoy never compresses ext_proc messages; a client that does is told, not misread."""
    target = f"127.0.0.1:{epp.server.opts.grpc_port}"
    async with grpc.aio.insecure_channel(target, compression=grpc.Compression.Gzip) as channel:
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg({**BASE, "x-padding": "x" * 2000}))
        assert await rpc_error(call) == grpc.StatusCode.UNIMPLEMENTED
        assert "compressed" in (await call.details() or "")


async def test_an_unparsable_message_is_internal(epp: Epp) -> None:
    raw = epp.channel.stream_stream(PROCESS_PATH.decode())  # bytes in, bytes out
    call = raw()
    await call.write(b"\xff\xff\xff\xff")
    assert await rpc_error(call) == grpc.StatusCode.INTERNAL


async def test_a_message_over_the_limit_is_resource_exhausted(epp: Epp) -> None:
    small = H2ExtProcServer(lambda: RequestStream(epp.server.director), max_message_bytes=4096)
    await small.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
            call = ep_grpc.ExternalProcessorStub(channel).Process()
            await call.write(headers_msg(BASE))
            body = json.dumps({"model": "m", "prompt": "x" * 5000}).encode()
            await call.write(body_msg(body))
            assert await rpc_error(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4096-byte limit" in (await call.details() or "")
            # the connection is still good for the next call
            ok = ep_grpc.ExternalProcessorStub(channel).Process()
            await ok.write(headers_msg(BASE))
            await ok.write(body_msg(json.dumps({"model": "m", "prompt": "hi"}).encode()))
            reply = await asyncio.wait_for(ok.read(), 5)
            assert set_headers(reply)["x-gateway-destination-endpoint"] in epp.endpoints
            await ok.done_writing()
    finally:
        await small.stop(0)


async def test_replies_wait_for_the_client_flow_control_window(epp: Epp) -> None:
    """A ~1 MB body is re-sent in 62,000-byte chunks through a 64 KiB window that the
    client only widens as it reads (BDP probing off): every byte arrives, in order."""
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_535)]
    target = f"127.0.0.1:{epp.server.opts.grpc_port}"
    body = json.dumps({"model": "m", "prompt": "y" * 1_000_000}).encode()
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg(BASE))
        await call.write(body_msg(body))
        head = await asyncio.wait_for(call.read(), 5)
        assert set_headers(head)["content-length"] == str(len(body))
        received = b""
        while True:
            chunk = await asyncio.wait_for(call.read(), 5)
            streamed = chunk.request_body.response.body_mutation.streamed_response
            received += streamed.body
            if streamed.end_of_stream:
                break
        assert received == body
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_call_outlasting_the_stop_grace_is_answered_unavailable(epp: Epp) -> None:
    call = epp.stub.Process()
    await call.write(headers_msg(BASE))
    await call.write(body_msg(json.dumps({"model": "m", "prompt": "hi"}).encode()))
    for _ in range(2):  # routed (headers reply, body); the response never comes
        await asyncio.wait_for(call.read(), 5)
    broken_before = streams_total(epp, "broken")
    await epp.server.stop(grace_s=0.2)
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (await call.details() or "")
    assert streams_total(epp, "broken") == broken_before + 1  # the hooks ran, as broken


async def test_a_client_speaking_no_http2_only_loses_its_own_connection(epp: Epp) -> None:
    port = epp.server.opts.grpc_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port, family=socket.AF_INET)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) is not None  # closed by the server
    writer.close()
    call = epp.stub.Process()
    await call.write(headers_msg({":method": "GET", ":path": "/v1/models"}, end_of_stream=True))
    reply = await asyncio.wait_for(call.read(), 5)
    assert set_headers(reply)["x-gateway-destination-endpoint"] in epp.endpoints
    await call.done_writing()


async def test_a_taken_port_is_a_clear_error(epp: Epp) -> None:
    taken = H2ExtProcServer(lambda: RequestStream(epp.server.director))
    with pytest.raises(KvgateError, match=f"--grpc-port {epp.server.opts.grpc_port}"):
        await taken.start("127.0.0.1", epp.server.opts.grpc_port)
