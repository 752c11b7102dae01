"""vertexai-parser through a real ``kvgate epp`` process spoken to as Envoy would: a Vertex AI gRPC
ChatCompletions request is scheduled by the model and messages of the OpenAI JSON it wraps,
and its body is forwarded untouched; RawPredict reads llm-d's /responses shape. The request
is built with googleapis' own HttpBody, so the wrapper kvgate declares is checked against it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.api import httpbody_pb2

from extproc.epp_rig import body_msg, headers_msg, model_server, set_headers
from kvgate.errors import BadRequestError
from kvgate.plugins.requesthandling.grpc_wire import frame
from plugins.kit import make
from support.procs import Proc, free_port, kvgate_cmd

CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
requestHandler:
  parsers:
  - pluginRef: vertexai-parser
plugins:
- name: vertexai-parser
  type: vertexai-parser
"""
CHAT = "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions"
RAW = "/google.cloud.aiplatform.v1beta1.PredictionService/RawPredict"


def _request(payload: dict[str, object]) -> bytes:
    """``{endpoint = 1: string, http_body = 2: google.api.HttpBody}``, as Vertex AI sends it."""
    body = httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(payload).encode())
    endpoint = b"projects/p/locations/l/endpoints/e"
    nested = body.SerializeToString()
    return frame(
        b"\x0a" + bytes([len(endpoint)]) + endpoint + b"\x12" + bytes([len(nested)]) + nested
    )


async def test_the_epp_schedules_chat_completions_by_model_and_messages(tmp_path: Path) -> None:
    """A real ``kvgate epp`` process, spoken to over ext_proc as Envoy would."""
    servers = [await model_server() for _ in range(2)]
    endpoints = [hp for _, hp in servers]
    grpc_port, metrics_port = free_port(), free_port()
    epp = Proc(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--grpc-health-port", str(free_port()), "--metrics-port", str(metrics_port),
            *(arg for hp in endpoints for arg in ("--endpoint", hp)), "--config-text", CONFIG,
        ),
        tmp_path / "epp.log",
    )  # fmt: skip
    chat = _request({"model": "vx-model", "messages": [{"role": "user", "content": "hi"}]})
    try:
        await asyncio.to_thread(epp.wait_http, f"http://127.0.0.1:{metrics_port}/healthz", 60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = ep_grpc.ExternalProcessorStub(channel).Process()
            headers = {":method": "POST", ":path": CHAT, "content-type": "application/grpc"}
            await call.write(headers_msg(headers))
            await call.write(body_msg(chat))
            routed = await asyncio.wait_for(call.read(), 10)
            resent = await asyncio.wait_for(call.read(), 10)
            assert set_headers(routed)["x-gateway-destination-endpoint"] in endpoints
            assert resent.request_body.response.body_mutation.streamed_response.body == chat
            await call.done_writing()
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            page = await r.text()
        assert re.search(
            r'^inference_objective_request_total\{[^}]*model_name="vx-model"', page, re.M
        )
    finally:
        epp.stop()
        for runner, _ in servers:
            await runner.cleanup()


def test_raw_predict_reads_the_responses_shape_and_bad_bodies_are_400() -> None:
    parser = make("vertexai-parser")
    read = parser.parse_request(RAW, _request({"model": "m", "input": "tell me"}))
    assert (read.kind, read.view["prompt"], read.view["model"]) == ("completions", "tell me", "m")
    read = parser.parse_request(CHAT, _request({"model": "m", "messages": [], "stream": True}))
    assert read.kind == "chat" and read.stream
    with pytest.raises(BadRequestError, match="has no http_body"):
        parser.parse_request(CHAT, frame(b""))
    with pytest.raises(BadRequestError, match="not valid JSON"):
        parser.parse_request(CHAT, frame(b"\x12\x04\x12\x02{x"))
    answer = httpbody_pb2.HttpBody(data=b'{"usage": {"prompt_tokens": 9, "completion_tokens": 2}}')
    usage = parser.response_usage(frame(answer.SerializeToString()))
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
    chunks = [b'data: {"choices": []}\n\n', b'data: {"usage": {"prompt_tokens": 5}}\n\n']
    streamed = b"".join(frame(httpbody_pb2.HttpBody(data=c).SerializeToString()) for c in chunks)
    assert parser.response_usage(streamed).prompt_tokens == 5
