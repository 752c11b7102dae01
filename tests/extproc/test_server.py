"""``kvgate epp`` spoken to as Envoy would, over real gRPC, with the real scheduler.

Every test runs against both ext_proc servers (``--grpc-server h2`` and ``grpcio``); the
model servers are only scraped (tests/extproc/epp_rig.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.epp_rig import (
    BASE,
    BUFFERED,
    FULL_DUPLEX,
    Epp,
    body_msg,
    exchange,
    headers_msg,
    metric,
    model_server,
    open_epp,
    set_headers,
    start_epp,
    stop_epp,
    wait_metric,
)
from kvgate.endpoints.static import spec_from_url
from kvgate.extproc.app import EppOptions, EppServer
from kvgate.extproc.health import SERVING, _encode_status
from kvgate.extproc.messages import MAX_BODY_CHUNK_BYTES
from support.procs import free_port

FILTER_ALL = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: by-label
  parameters: {label: zone, validValues: [mars]}
- type: max-score-picker
"""


@pytest.fixture(params=["h2", "grpcio"])
def grpc_server(request: pytest.FixtureRequest) -> str:
    """Every test here runs against both ext_proc servers (``--grpc-server``)."""
    return str(request.param)


@pytest.fixture
async def epp(grpc_server: str) -> AsyncIterator[Epp]:
    async with open_epp(grpc_server) as running:
        yield running


async def test_full_duplex_reply_header_metadata_and_chunked_body(epp: Epp) -> None:
    prompt = "x" * 150_000  # needs three chunks of <= 62,000 bytes
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    spoof = "10.9.9.9:1"
    msgs = [
        headers_msg(
            {**BASE, "x-gateway-destination-endpoint": spoof, "x-prefiller-host-port": spoof}
        ),
        body_msg(body[:70_000], end_of_stream=False),
        body_msg(body[70_000:]),
    ]
    replies, call = await exchange(epp, msgs, expect=4)
    head, *chunks = replies
    assert head.WhichOneof("response") == "request_headers"
    common = head.request_headers.response
    assert common.clear_route_cache
    headers = set_headers(head)
    destination = headers["x-gateway-destination-endpoint"]
    assert destination in epp.endpoints and destination != spoof
    assert headers["content-length"] == str(len(body))
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])  # generated: none was sent
    assert "x-prefiller-host-port" in common.header_mutation.remove_headers
    lb = head.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == destination
    sent = [c.request_body.response.body_mutation.streamed_response for c in chunks]
    assert all(len(s.body) <= MAX_BODY_CHUNK_BYTES for s in sent)
    assert [s.end_of_stream for s in sent] == [False, False, True]
    assert b"".join(s.body for s in sent) == body
    await call.done_writing()


async def test_buffered_mode_answers_headers_then_routes_on_the_body(epp: Epp) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    call = epp.stub.Process()
    await call.write(
        headers_msg({**BASE, ":path": "/v1/chat/completions", "x-request-id": "abc"}, mode=BUFFERED)
    )
    first = await asyncio.wait_for(call.read(), 5)
    assert first.WhichOneof("response") == "request_headers"
    assert "x-gateway-destination-endpoint" not in set_headers(first)
    await call.write(body_msg(body))
    second = await asyncio.wait_for(call.read(), 5)
    assert second.WhichOneof("response") == "request_body"
    headers = set_headers(second)
    assert headers["x-gateway-destination-endpoint"] in epp.endpoints
    assert "x-request-id" not in headers  # the client's id is kept as is
    assert second.request_body.response.clear_route_cache
    assert not second.request_body.response.body_mutation.body  # unchanged body: not re-sent
    await call.done_writing()


async def test_subset_hint_narrows_the_candidates(epp: Epp) -> None:
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    for target in epp.endpoints:
        replies, call = await exchange(
            epp, [headers_msg(BASE, subset=[target]), body_msg(body)], expect=2
        )
        assert set_headers(replies[0])["x-gateway-destination-endpoint"] == target
        await call.done_writing()
    replies, call = await exchange(epp, [headers_msg(BASE, subset=[]), body_msg(body)], expect=1)
    assert replies[0].immediate_response.status.code == 503
    await call.done_writing()


async def test_disable_endpoint_subset_filter_ignores_the_hint() -> None:
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    async with open_epp("h2", subset_filter=False) as epp:
        replies, call = await exchange(
            epp, [headers_msg(BASE, subset=[]), body_msg(body)], expect=2
        )
        assert set_headers(replies[0])["x-gateway-destination-endpoint"] in epp.endpoints
        await call.done_writing()


async def test_metrics_path_flag_sets_what_is_scraped() -> None:
    # the model server serves /metrics only: scraped at /stats it fails and stays out
    runner, hostport = await model_server()
    server = EppServer(
        EppOptions(
            grpc_host="127.0.0.1",
            grpc_port=free_port(),
            grpc_health_port=free_port(),
            metrics_port=free_port(),
            endpoints=[spec_from_url(hostport)],
            model_server_metrics_path="/stats",
        )
    )
    await server.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while server.scraper.scrape_errors_total < 3:
            assert asyncio.get_running_loop().time() < deadline, "/stats was never scraped"
            await asyncio.sleep(0.02)
        assert server.pool.candidates() == []
    finally:
        await server.stop()
        await runner.cleanup()


async def test_model_rewrite_header_rewrites_the_body(epp: Epp) -> None:
    body = json.dumps({"model": "base", "prompt": "hello"}).encode()
    msgs = [headers_msg({**BASE, "x-gateway-model-name-rewrite": "lora-a"}), body_msg(body)]
    replies, call = await exchange(epp, msgs, expect=2)
    sent = replies[1].request_body.response.body_mutation.streamed_response.body
    assert json.loads(sent)["model"] == "lora-a"
    assert set_headers(replies[0])["content-length"] == str(len(sent))
    await call.done_writing()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{nope", 400, "not valid JSON"),
        (b'{"prompt": "x"}', 400, "'model' is required"),
        (b'{"model": "m"}', 400, "'prompt' is required"),
    ],
)
async def test_bad_requests_get_openai_errors(
    epp: Epp, body: bytes, status: int, needle: str
) -> None:
    replies, call = await exchange(epp, [headers_msg(BASE), body_msg(body)], expect=1)
    immediate = replies[0].immediate_response
    assert immediate.status.code == status
    error = json.loads(immediate.body)["error"]
    assert needle in error["message"] and error["code"] == status
    await call.done_writing()


async def test_streamed_body_mode_is_refused_with_the_fix(epp: Epp) -> None:
    msg = headers_msg(BASE, mode=pm.ProcessingMode.STREAMED)
    replies, call = await exchange(epp, [msg], expect=1)
    assert replies[0].immediate_response.status.code == 500
    assert (
        "FULL_DUPLEX_STREAMED or BUFFERED"
        in json.loads(replies[0].immediate_response.body)["error"]["message"]
    )
    await call.done_writing()


async def test_request_without_body_gets_an_endpoint(epp: Epp) -> None:
    msg = headers_msg({":method": "GET", ":path": "/v1/models"}, end_of_stream=True)
    replies, call = await exchange(epp, [msg], expect=1)
    assert set_headers(replies[0])["x-gateway-destination-endpoint"] in epp.endpoints
    await call.done_writing()


SSE_ANSWER = (
    b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":7,'
    b'"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}\n\ndata: [DONE]\n\n'
)
JSON_ANSWER = json.dumps(
    {"choices": [{"text": "abc"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
).encode()


@pytest.mark.parametrize(
    ("content_type", "answer"),
    [(b"text/event-stream", SSE_ANSWER), (b"application/json", JSON_ANSWER)],
    ids=["sse", "json"],
)
async def test_response_usage_reaches_the_completion_hooks(
    epp: Epp, content_type: bytes, answer: bytes
) -> None:
    before_out = await metric(epp, "inference_objective_output_tokens_sum")
    before_in = await metric(epp, "inference_objective_input_tokens_sum")
    body = json.dumps({"model": "m", "prompt": "hello", "stream": True}).encode()
    _replies, call = await exchange(epp, [headers_msg(BASE), body_msg(body)], expect=2)
    assert await metric(epp, "inference_objective_running_requests") == 1
    resp_headers = ep.ProcessingRequest(
        response_headers=ep.HttpHeaders(
            headers=core.HeaderMap(
                headers=[
                    core.HeaderValue(key=":status", raw_value=b"200"),
                    core.HeaderValue(key="content-type", raw_value=content_type),
                ]
            )
        )
    )
    await call.write(resp_headers)
    pieces = ((answer[:40], False), (answer[40:], True))  # split inside a line / the JSON
    if content_type == b"text/event-stream":
        # SSE is never held: headers at once, every chunk echoed as it comes
        reply = await asyncio.wait_for(call.read(), 5)
        assert set_headers(reply)["x-went-into-resp-headers"] == "true"
        for piece, last in pieces:
            await call.write(
                ep.ProcessingRequest(response_body=ep.HttpBody(body=piece, end_of_stream=last))
            )
            echoed = await asyncio.wait_for(call.read(), 5)
            streamed = echoed.response_body.response.body_mutation.streamed_response
            assert streamed.body == piece and streamed.end_of_stream == last
    else:
        # a JSON answer is held to its end, then headers and body go out together
        for piece, last in pieces:
            await call.write(
                ep.ProcessingRequest(response_body=ep.HttpBody(body=piece, end_of_stream=last))
            )
        reply = await asyncio.wait_for(call.read(), 5)
        assert set_headers(reply)["x-went-into-resp-headers"] == "true"
        echoed = await asyncio.wait_for(call.read(), 5)
        streamed = echoed.response_body.response.body_mutation.streamed_response
        assert streamed.body == answer and streamed.end_of_stream
    await call.done_writing()
    assert await metric(epp, "inference_objective_output_tokens_sum") == before_out + 3
    assert await metric(epp, "inference_objective_input_tokens_sum") == before_in + 7
    assert await metric(epp, "inference_objective_running_requests") == 0


RESPONSE_JSON_HEADERS = ep.ProcessingRequest(
    response_headers=ep.HttpHeaders(
        headers=core.HeaderMap(
            headers=[
                core.HeaderValue(key=":status", raw_value=b"200"),
                core.HeaderValue(key="content-type", raw_value=b"application/json"),
            ]
        )
    )
)

SESSION_AFFINITY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: session-affinity-scorer
- type: max-score-picker
"""


@pytest.mark.parametrize("mode", [FULL_DUPLEX, BUFFERED], ids=["full-duplex", "buffered"])
async def test_session_token_reaches_the_client_and_steers_the_next_request(
    grpc_server: str, mode: int
) -> None:
    server, runners, _ = await start_epp(grpc_server, policy=None, config_text=SESSION_AFFINITY)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.opts.grpc_port}")
    stub = ep_grpc.ExternalProcessorStub(channel)
    answer = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()

    async def one(token: str | None) -> tuple[str, str]:
        call = stub.Process()
        headers = {**BASE, **({"x-session-token": token} if token else {})}
        await call.write(headers_msg(headers, mode=mode))
        if mode == BUFFERED:
            await asyncio.wait_for(call.read(), 5)
        await call.write(body_msg(body))
        first = await asyncio.wait_for(call.read(), 5)
        destination = set_headers(first)["x-gateway-destination-endpoint"]
        if mode == FULL_DUPLEX:
            await asyncio.wait_for(call.read(), 5)  # the re-sent request body
        await call.write(RESPONSE_JSON_HEADERS)
        if mode == BUFFERED:
            await asyncio.wait_for(call.read(), 5)
        await call.write(
            ep.ProcessingRequest(response_body=ep.HttpBody(body=answer, end_of_stream=True))
        )
        carrying = await asyncio.wait_for(call.read(), 5)  # headers (full duplex) / body reply
        await call.done_writing()
        return destination, set_headers(carrying)["x-session-token"]

    try:
        destination, token = await one(None)
        for _ in range(8):  # the token names the endpoint; it wins every time
            again, _ = await one(token)
            assert again == destination
    finally:
        await channel.close()
        await stop_epp(server, runners)


async def test_broken_stream_still_completes_the_request(epp: Epp) -> None:
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    _, call = await exchange(epp, [headers_msg(BASE), body_msg(body)], expect=2)
    assert await metric(epp, "inference_objective_running_requests") == 1
    call.cancel()  # Envoy reset the stream (client went away)
    deadline = asyncio.get_running_loop().time() + 5
    while await metric(epp, "inference_objective_running_requests") != 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert await metric(epp, "kvgate_epp_streams_total") >= 1


async def test_no_pick_is_429_and_health_serves(epp: Epp) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{epp.server.opts.grpc_health_port}")
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    assert await check(b"") == _encode_status(SERVING)
    await channel.close()

    server, runners, _ = await start_epp(
        epp.server.opts.grpc_server, policy=None, config_text=FILTER_ALL
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.opts.grpc_port}")
    try:
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg(BASE))
        await call.write(body_msg(b'{"model": "m", "prompt": "x"}'))
        reply = await asyncio.wait_for(call.read(), 5)
        assert reply.immediate_response.status.code == 429
        assert json.loads(reply.immediate_response.body)["error"]["type"] == "rate_limit_error"
    finally:
        await channel.close()
        await stop_epp(server, runners)


async def test_secure_serving_with_a_generated_certificate(grpc_server: str) -> None:
    server, runners, hostports = await start_epp(grpc_server, secure_serving=True)
    try:
        assert server.tls_cert is not None
        creds = grpc.ssl_channel_credentials(root_certificates=server.tls_cert)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{server.opts.grpc_port}",
            creds,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg({":method": "GET", ":path": "/v1/models"}, end_of_stream=True))
        reply = await asyncio.wait_for(call.read(), 5)
        assert set_headers(reply)["x-gateway-destination-endpoint"] in hostports
        await channel.close()
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{server.opts.grpc_port}")
        with pytest.raises(grpc.aio.AioRpcError):
            call = ep_grpc.ExternalProcessorStub(plain).Process()
            await call.write(headers_msg(BASE, end_of_stream=True))
            await asyncio.wait_for(call.read(), 5)
        await plain.close()
    finally:
        await stop_epp(server, runners)


async def test_other_methods_are_unimplemented(epp: Epp) -> None:
    for path in (
        "/envoy.service.ext_proc.v3.ExternalProcessor/Other",
        "/grpc.health.v1.Health/Check",  # served on --grpc-health-port only
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(epp.channel.unary_unary(path)(b""), 5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_outcomes_are_counted_alike(epp: Epp) -> None:
    """kvgate_epp_streams_total{outcome}: answered, rejected (immediate response), broken."""
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    _, call = await exchange(
        epp, [headers_msg({":method": "GET", ":path": "/v1/models"}, end_of_stream=True)], 1
    )
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    _, call = await exchange(epp, [headers_msg(BASE), body_msg(b"{nope")], expect=1)
    assert await call.code() == grpc.StatusCode.OK  # the immediate response ends the call
    _, call = await exchange(epp, [headers_msg(BASE), body_msg(body)], expect=2)
    call.cancel()
    await wait_metric(epp, "inference_objective_running_requests", 0)
    await wait_metric(epp, 'kvgate_epp_streams_total{outcome="rejected"}', 1)
    await wait_metric(epp, "kvgate_epp_streams_total", 3)
    if epp.server.opts.grpc_server == "h2":
        # grpc.aio ends the request iterator quietly on a reset, as on Envoy's close: the
        # grpcio servicer cannot tell this cancel from a clean end (server.py)
        await wait_metric(epp, 'kvgate_epp_streams_total{outcome="broken"}', 1)


# Envoy's side of one routed request, then nothing: the process is killed with it.
_VANISHING_ENVOY = """
import asyncio, sys
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

async def main() -> None:
    channel = grpc.aio.insecure_channel(sys.argv[1])
    call = ep_grpc.ExternalProcessorStub(channel).Process()
    for raw in sys.argv[2:]:
        await call.write(ep.ProcessingRequest.FromString(bytes.fromhex(raw)))
    await call.read()
    print("routed", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_vanished_client_still_completes_the_request(epp: Epp) -> None:
    """The connection is lost (Envoy killed) with a request in flight: its completion
    hooks run, as broken."""
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    messages = [
        headers_msg(BASE).SerializeToString().hex(),
        body_msg(body).SerializeToString().hex(),
    ]
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _VANISHING_ENVOY,
        f"127.0.0.1:{epp.server.opts.grpc_port}",
        *messages,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        assert await asyncio.wait_for(client.stdout.readline(), 20) == b"routed\n"
        assert await metric(epp, "inference_objective_running_requests") == 1
    finally:
        client.kill()
        await client.wait()
    await wait_metric(epp, "inference_objective_running_requests", 0)  # the hooks ran
    await wait_metric(epp, "kvgate_epp_streams_total", 1)
    if epp.server.opts.grpc_server == "h2":  # grpcio cannot tell (see above)
        await wait_metric(epp, 'kvgate_epp_streams_total{outcome="broken"}', 1)


async def test_stop_lets_a_call_in_flight_finish(grpc_server: str) -> None:
    server, runners, _ = await start_epp(grpc_server)
    target = f"127.0.0.1:{server.opts.grpc_port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg(BASE))
        await call.write(body_msg(json.dumps({"model": "m", "prompt": "hello"}).encode()))
        for _ in range(2):
            await asyncio.wait_for(call.read(), 5)
        stopping = asyncio.create_task(server.stop(grace_s=10))

        async def refused() -> bool:
            async with grpc.aio.insecure_channel(target) as fresh:
                try:
                    await asyncio.wait_for(fresh.unary_unary("/x/y")(b""), 1)
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE
                except TimeoutError:
                    return False
            return False

        deadline = asyncio.get_running_loop().time() + 5
        while not await refused():  # the server is stopping: no new connections
            assert asyncio.get_running_loop().time() < deadline, "still taking new calls"
            await asyncio.sleep(0.02)
        await call.write(RESPONSE_JSON_HEADERS)
        await call.write(
            ep.ProcessingRequest(response_body=ep.HttpBody(body=b"{}", end_of_stream=True))
        )
        for _ in range(2):  # the held headers, then the body
            await asyncio.wait_for(call.read(), 5)
        await call.done_writing()
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 10)  # returns once the last call ended
        assert not stopping.exception()
    finally:
        await channel.close()
        await stop_epp(server, runners)


async def test_a_failed_start_stops_what_it_started(grpc_server: str) -> None:
    # the metrics port is taken: start fails, and the ext_proc and health servers it had
    # already started are stopped (a grpcio server left running hangs the process's exit)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        opts = EppOptions(
            grpc_host="127.0.0.1",
            grpc_port=free_port(),
            grpc_health_port=free_port(),
            metrics_port=taken.getsockname()[1],
            endpoints=[],
            grpc_server=grpc_server,
        )
        with pytest.raises(OSError, match="address already in use"):
            await EppServer(opts).start()
    for port in (opts.grpc_port, opts.grpc_health_port):
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))  # raises if a server still holds it
