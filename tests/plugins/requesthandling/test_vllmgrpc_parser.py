"""vllmgrpc-parser through a real ``kvgate epp`` spoken to as Envoy would: vLLM gRPC Generate
requests are scheduled on their prompt (repeats follow the prefix cache), the protobuf body
is forwarded untouched, usage is read from the GenerateResponse, and paths no listed parser
claims are refused; ``kvgate serve`` refuses the parser at start-up."""

from __future__ import annotations

import asyncio
import re
import subprocess

import pytest
from aiohttp import ClientSession
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.epp_rig import body_msg, exchange, headers_msg, open_epp, set_headers
from kvgate.errors import BadRequestError
from kvgate.plugins.requesthandling.grpc_wire import frame, vllm
from plugins.kit import make
from support.procs import kvgate_cmd

CONFIG = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
- name: vllmgrpcParser
  type: vllmgrpc-parser
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
requestHandler:
  parsers:
  - pluginRef: vllmgrpcParser
"""
GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"
EMBED = "/vllm.grpc.engine.VllmEngine/Embed"
GRPC = {":method": "POST", "content-type": "application/grpc", "te": "trailers"}
GRPC_RESPONSE_HEADERS = ep.ProcessingRequest(
    response_headers=ep.HttpHeaders(
        headers=core.HeaderMap(
            headers=[
                core.HeaderValue(key=":status", raw_value=b"200"),
                core.HeaderValue(key="content-type", raw_value=b"application/grpc"),
            ]
        )
    )
)


def _generate(text: str) -> bytes:
    api = vllm()
    message = api.GenerateRequest(request_id="r", text=text, stream=True)
    message.sampling_params.max_tokens = 8
    return frame(message.SerializeToString())


async def test_the_epp_schedules_generate_requests_on_their_prompt() -> None:
    prompt = "You are a careful assistant. " * 40
    async with open_epp("h2", config_text=CONFIG) as epp:
        picks = []
        for i in range(6):
            body = _generate(prompt + str(i))
            replies, call = await exchange(
                epp, [headers_msg({**GRPC, ":path": GENERATE}), body_msg(body)], expect=2
            )
            picks.append(set_headers(replies[0])["x-gateway-destination-endpoint"])
            sent = replies[1].request_body.response.body_mutation.streamed_response.body
            assert sent == body  # the protobuf body goes on byte for byte
            if i == 0:  # the answer's usage is read from the GenerateResponse
                await call.write(GRPC_RESPONSE_HEADERS)
                await asyncio.wait_for(call.read(), 5)  # relayed, never held
                api = vllm()
                done = api.GenerateResponse(
                    complete=api.GenerateComplete(prompt_tokens=321, completion_tokens=8)
                )
                answer = frame(done.SerializeToString())
                await call.write(
                    ep.ProcessingRequest(response_body=ep.HttpBody(body=answer, end_of_stream=True))
                )
                await asyncio.wait_for(call.read(), 5)
            await call.done_writing()
        assert len(set(picks)) == 1  # the shared prefix keeps them on one endpoint
        async with ClientSession() as s, s.get(epp.metrics_url) as r:
            page = await r.text()
        assert re.search(r"^inference_objective_input_tokens_sum\{[^}]*\} 321\.0$", page, re.M)
        # no listed parser claims an OpenAI path: 400
        replies, call = await exchange(
            epp,
            [headers_msg({":method": "POST", ":path": "/v1/completions"}), body_msg(b"{}")],
            expect=1,
        )
        assert replies[0].immediate_response.status.code == 400
        await call.done_writing()


def test_requests_are_read_as_llm_d_reads_them() -> None:
    parser = make("vllmgrpc-parser")
    api = vllm()
    tokens = api.GenerateRequest(tokenized=api.TokenizedInput(input_ids=[5, 6, 7]))
    read = parser.parse_request(GENERATE, frame(tokens.SerializeToString()))
    assert (read.token_ids, read.prompt, read.stream) == ((5, 6, 7), None, False)
    embed = api.EmbedRequest(tokenized=api.TokenizedInput(input_ids=[1]))
    read = parser.parse_request(EMBED, frame(embed.SerializeToString()))
    assert read.token_ids == (1,)
    with pytest.raises(BadRequestError, match="compressed"):
        parser.parse_request(GENERATE, b"\x01" + frame(b"")[1:])
    with pytest.raises(BadRequestError, match="neither text nor tokenized"):
        parser.parse_request(GENERATE, frame(b""))


def test_kvgate_serve_refuses_it_in_one_line() -> None:
    done = subprocess.run(
        kvgate_cmd("serve", "--endpoint", "http://127.0.0.1:9", "--config-text", CONFIG),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        "error: requestHandler.parsers: 'vllmgrpcParser' (vllmgrpc-parser) parses gRPC (h2c) "
        "requests, which kvgate serve cannot receive (it speaks HTTP/1.1 with JSON bodies); "
        "run kvgate epp behind Envoy for it"
    )
