"""``vertexai-parser`` (llm-d-router): parse Vertex AI's gRPC ``PredictionService`` requests
that wrap an OpenAI JSON body.

* Claims the paths ending ``PredictionService/ChatCompletions``, ``.../RawPredict`` and
  ``.../StreamRawPredict`` (h2c: gRPC over HTTP/2, so only ``kvgate epp`` behind Envoy
  receives them; ``kvgate serve`` refuses the parser at start-up).
* Request: the one length-prefixed protobuf message; its ``http_body.data`` is the OpenAI
  JSON. ChatCompletions is read as ``/v1/chat/completions`` (``model`` and ``messages``
  required); RawPredict and StreamRawPredict as llm-d's ``/responses`` route: ``messages``,
  ``input`` items or text, as kvgate reads vLLM's other routes
  (:func:`kvgate.openai.requests.routing_view`). The request is then scheduled by its model and
  prompt like any OpenAI request; the body is forwarded unchanged (a model rewrite cannot
  re-encode it). A message without ``http_body``, undecodable, or compressed: 400.
* Response: each gRPC message is an ``HttpBody`` carrying JSON, or server-sent events when
  streamed; the last ``usage`` found is read.
* Parameters: none.
"""

from __future__ import annotations

from typing import Any

from kvgate.errors import BadRequestError
from kvgate.openai.requests import parse_body, routing_view
from kvgate.openai.usage import Usage, usage_from_json, usage_from_sse
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.requesthandling import ParsedRequest
from kvgate.plugins.requesthandling.grpc_wire import GrpcPayloadError, messages, unframe, vertexai
from kvgate.scheduling.types import RequestKind

TYPE = "vertexai-parser"
CHAT_COMPLETIONS = "PredictionService/ChatCompletions"
STREAM_RAW_PREDICT = "PredictionService/StreamRawPredict"
RAW_PREDICT = "PredictionService/RawPredict"


class VertexAIParser:
    """Reads the OpenAI JSON inside Vertex AI's gRPC requests and responses."""

    type_name = TYPE
    parses: str = "vertex-ai"
    claims: tuple[str, ...] = (CHAT_COMPLETIONS, STREAM_RAW_PREDICT, RAW_PREDICT)
    protocol: str = "h2c"

    health_method: str | None = None  # Vertex AI model containers answer HTTP health

    def __init__(self, name: str) -> None:
        self.name = name

    def healthy(self, reply: bytes) -> bool:
        return True

    def parse_request(self, path: str, body: bytes) -> ParsedRequest:
        from google.protobuf.message import DecodeError

        api = vertexai()
        if path.endswith(CHAT_COMPLETIONS):
            message_type: Any = api.ChatCompletionsRequest
        elif path.endswith(STREAM_RAW_PREDICT):
            message_type = api.StreamRawPredictRequest
        else:
            message_type = api.RawPredictRequest
        try:
            message = message_type.FromString(unframe(body))
        except (GrpcPayloadError, DecodeError) as exc:
            raise BadRequestError(f"invalid Vertex AI gRPC request: {exc}") from exc
        if not message.HasField("http_body"):
            raise BadRequestError(f"{message_type.DESCRIPTOR.name} has no http_body")
        parsed = parse_body(message.http_body.data)
        kind: RequestKind = "chat"
        view = parsed
        if not path.endswith(CHAT_COMPLETIONS):
            kind, view = routing_view(parsed)
        return ParsedRequest(kind=kind, view=view, stream=parsed.get("stream") is True)

    def response_usage(self, body: bytes) -> Usage | None:
        from google.protobuf.message import DecodeError

        api = vertexai()
        usage: Usage | None = None
        try:
            for raw in messages(body):
                data = api.HttpBody.FromString(raw).data
                found = usage_from_sse(data) if data.startswith(b"data:") else usage_from_json(data)
                usage = found or usage
        except (GrpcPayloadError, DecodeError):
            return usage
        return usage


def create(name: str, params: Params, ctx: PluginContext) -> VertexAIParser:
    return VertexAIParser(name)
