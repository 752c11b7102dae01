"""vertexai-parser through a real ``kvgate epp`` spoken to as Envoy would: a Vertex AI gRPC
ChatCompletions request is scheduled by the model and messages of the OpenAI JSON it wraps,
and its body is forwarded untouched; RawPredict reads llm-d's /responses shape. The request
is built with googleapis' own HttpBody, so the wrapper kvgate declares is checked against it."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp import ClientSession
from google.api import httpbody_pb2

from extproc.epp_rig import body_msg, exchange, headers_msg, open_epp, set_headers
from kvgate.errors import BadRequestError
from kvgate.plugins.requesthandling.grpc_wire import frame
from plugins.kit import make

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


async def test_the_epp_schedules_chat_completions_by_model_and_messages() -> None:
    chat = _request({"model": "vx-model", "messages": [{"role": "user", "content": "hi"}]})
    async with open_epp("h2", config_text=CONFIG) as epp:
        headers = {":method": "POST", ":path": CHAT, "content-type": "application/grpc"}
        replies, call = await exchange(epp, [headers_msg(headers), body_msg(chat)], expect=2)
        assert set_headers(replies[0])["x-gateway-destination-endpoint"] in epp.endpoints
        assert replies[1].request_body.response.body_mutation.streamed_response.body == chat
        await call.done_writing()
        async with ClientSession() as s, s.get(epp.metrics_url) as r:
            page = await r.text()
        assert re.search(
            r'^inference_objective_request_total\{[^}]*model_name="vx-model"', page, re.M
        )


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
