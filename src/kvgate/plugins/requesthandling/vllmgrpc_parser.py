"""``vllmgrpc-parser`` (llm-d-router): parse vLLM's gRPC engine API (``vllm.grpc.engine``).

* Claims the paths ending ``vllm.grpc.engine.VllmEngine/Generate`` and ``.../Embed`` (h2c:
  gRPC over HTTP/2, so only ``kvgate epp`` behind Envoy receives them; ``kvgate serve``
  refuses the parser at start-up).
* Request: the one length-prefixed protobuf message. ``GenerateRequest`` schedules on its
  ``text`` (tokenized like a completions prompt) or on ``tokenized.input_ids`` (the token ids
  themselves); ``stream`` is read. ``EmbedRequest`` schedules on ``tokenized.input_ids``
  (required, as in llm-d). The API carries no model name, so candidates are not narrowed by
  model. Compressed messages, an undecodable message or a Generate without input: 400.
* Response: usage from ``GenerateResponse`` (``chunk`` or ``complete``: prompt, completion and
  cached tokens) or ``EmbedResponse`` (prompt tokens), the last message that reports any.
* Health: when it is the only parser (the endpoints speak vLLM's gRPC API alone),
  ``kvgate epp`` probes each endpoint with ``VllmEngine/HealthCheck`` instead of
  ``GET /health`` (kvgate.endpoints.grpc_health); point ``metrics-data-source``'s ``port`` at
  the server's Prometheus port, or set ``dataLayer.injectDefaults: false``, as the gRPC port
  serves no ``/metrics``.
* Parameters: none. The body is forwarded unchanged.
"""

from __future__ import annotations

from typing import Any

from kvgate.errors import BadRequestError
from kvgate.openai.usage import PromptTokensDetails, Usage
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.requesthandling import ParsedRequest
from kvgate.plugins.requesthandling.grpc_wire import GrpcPayloadError, messages, unframe, vllm

TYPE = "vllmgrpc-parser"
GENERATE = "vllm.grpc.engine.VllmEngine/Generate"
EMBED = "vllm.grpc.engine.VllmEngine/Embed"
HEALTH_CHECK = "/vllm.grpc.engine.VllmEngine/HealthCheck"


class VllmGrpcParser:
    """Reads vLLM's gRPC Generate and Embed requests and their usage."""

    type_name = TYPE
    parses: str = "vllm-grpc"
    claims: tuple[str, ...] = (GENERATE, EMBED)
    protocol: str = "h2c"
    strict_notes = (
        "GenerateRequest.mm_inputs (multimodal placeholders and hashes) are not read: such "
        "requests schedule on their token ids alone",
    )

    health_method: str | None = HEALTH_CHECK

    def __init__(self, name: str) -> None:
        self.name = name

    def healthy(self, reply: bytes) -> bool:
        from google.protobuf.message import DecodeError

        try:
            return bool(vllm().HealthCheckResponse.FromString(reply).healthy)
        except DecodeError:
            return False

    def parse_request(self, path: str, body: bytes) -> ParsedRequest:
        api = vllm()
        message_type = api.EmbedRequest if path.endswith(EMBED) else api.GenerateRequest
        message = _decode(message_type, body)
        if path.endswith(EMBED):
            if not message.HasField("tokenized"):
                raise BadRequestError("EmbedRequest has no tokenized input")
            return ParsedRequest(token_ids=tuple(message.tokenized.input_ids))
        which = message.WhichOneof("input")
        if which == "text":
            return ParsedRequest(prompt=message.text, stream=message.stream)
        if which == "tokenized":
            ids = tuple(message.tokenized.input_ids)
            return ParsedRequest(token_ids=ids, stream=message.stream)
        raise BadRequestError("GenerateRequest has neither text nor tokenized input")

    def response_usage(self, body: bytes) -> Usage | None:
        api = vllm()
        usage: Usage | None = None
        try:
            for raw in messages(body):
                found = _usage_of(api, raw)
                usage = found or usage
        except GrpcPayloadError:
            return usage
        return usage


def _decode(message_type: Any, body: bytes) -> Any:
    from google.protobuf.message import DecodeError

    try:
        return message_type.FromString(unframe(body))
    except (GrpcPayloadError, DecodeError) as exc:
        raise BadRequestError(f"invalid vLLM gRPC request: {exc}") from exc


def _usage_of(api: Any, raw: bytes) -> Usage | None:
    from google.protobuf.message import DecodeError

    try:
        reply = api.GenerateResponse.FromString(raw)
        which = reply.WhichOneof("response")
    except DecodeError:
        which = None
    if which is not None:
        part = getattr(reply, which)
        if part.prompt_tokens or part.completion_tokens:
            return Usage(
                prompt_tokens=part.prompt_tokens,
                completion_tokens=part.completion_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=part.cached_tokens),
            )
        return None
    try:
        embed = api.EmbedResponse.FromString(raw)
    except DecodeError:
        return None
    if embed.prompt_tokens:
        return Usage(prompt_tokens=embed.prompt_tokens, completion_tokens=0)
    return None


def create(name: str, params: Params, ctx: PluginContext) -> VllmGrpcParser:
    return VllmGrpcParser(name)
