"""gRPC payloads the gRPC request parsers read: length-prefixed framing and the messages.

The messages are declared here, field for field, from the public API descriptions: vLLM's gRPC
engine API (``vllm.grpc.engine``: GenerateRequest, EmbedRequest, their responses and
HealthCheckResponse) and the
three Vertex AI ``PredictionService`` requests that wrap an OpenAI JSON body in a
``google.api.HttpBody`` (ChatCompletionsRequest, RawPredictRequest, StreamRawPredictRequest:
``endpoint = 1``, ``http_body = 2``). Only the fields the parsers read are declared; the
``protobuf`` package decodes (unknown fields are skipped, as protobuf always does). The
classes are built once, on first use, in a private descriptor pool, so importing the parser
plugins costs nothing and needs no protobuf until a gRPC request is parsed.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

#: 1 byte compressed-flag + 4 bytes big-endian length, before every gRPC message.
FRAME_HEADER_BYTES = 5


class GrpcPayloadError(ValueError):
    """A body that is not one whole, uncompressed gRPC message."""


def unframe(body: bytes) -> bytes:
    """The first message of a length-prefixed gRPC body (a request carries exactly one)."""
    for message in messages(body):
        return message
    raise GrpcPayloadError(f"expected a gRPC frame of at least {FRAME_HEADER_BYTES} bytes")


def messages(body: bytes) -> Iterator[bytes]:
    """Every whole message of a gRPC stream's bytes; a trailing partial frame is an error."""
    offset = 0
    while offset < len(body):
        if len(body) - offset < FRAME_HEADER_BYTES:
            raise GrpcPayloadError("truncated gRPC frame header")
        compressed, length = struct.unpack_from(">BI", body, offset)
        if compressed:
            raise GrpcPayloadError("compressed gRPC messages are not supported")
        start = offset + FRAME_HEADER_BYTES
        if len(body) < start + length:
            raise GrpcPayloadError(
                f"incomplete gRPC message: {length} bytes announced, {len(body) - start} present"
            )
        yield body[start : start + length]
        offset = start + length


def frame(message: bytes) -> bytes:
    """``message`` with its gRPC length prefix (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


# (name, number, type, label, message type or "", oneof index or None, proto3 optional)
_Field = tuple[str, int, str, str, str, int | None, bool]

_VLLM: dict[str, tuple[list[_Field], list[str]]] = {
    "SamplingParams": ([("max_tokens", 8, "uint32", "optional", "", 0, True)], ["_max_tokens"]),
    "TokenizedInput": (
        [
            ("original_text", 1, "string", "optional", "", None, False),
            ("input_ids", 2, "uint32", "repeated", "", None, False),
        ],
        [],
    ),
    "GenerateRequest": (
        [
            ("request_id", 1, "string", "optional", "", None, False),
            ("tokenized", 2, "message", "optional", ".vllm.grpc.engine.TokenizedInput", 0, False),
            ("text", 3, "string", "optional", "", 0, False),
            (
                "sampling_params",
                4,
                "message",
                "optional",
                ".vllm.grpc.engine.SamplingParams",
                None,
                False,
            ),
            ("stream", 5, "bool", "optional", "", None, False),
        ],
        ["input"],
    ),
    "EmbedRequest": (
        [
            ("request_id", 1, "string", "optional", "", None, False),
            (
                "tokenized",
                2,
                "message",
                "optional",
                ".vllm.grpc.engine.TokenizedInput",
                None,
                False,
            ),
        ],
        [],
    ),
    "GenerateStreamChunk": (
        [
            ("token_ids", 1, "uint32", "repeated", "", None, False),
            ("prompt_tokens", 2, "uint32", "optional", "", None, False),
            ("completion_tokens", 3, "uint32", "optional", "", None, False),
            ("cached_tokens", 4, "uint32", "optional", "", None, False),
        ],
        [],
    ),
    "GenerateComplete": (
        [
            ("output_ids", 1, "uint32", "repeated", "", None, False),
            ("finish_reason", 2, "string", "optional", "", None, False),
            ("prompt_tokens", 3, "uint32", "optional", "", None, False),
            ("completion_tokens", 4, "uint32", "optional", "", None, False),
            ("cached_tokens", 5, "uint32", "optional", "", None, False),
        ],
        [],
    ),
    "GenerateResponse": (
        [
            ("chunk", 1, "message", "optional", ".vllm.grpc.engine.GenerateStreamChunk", 0, False),
            ("complete", 2, "message", "optional", ".vllm.grpc.engine.GenerateComplete", 0, False),
        ],
        ["response"],
    ),
    "HealthCheckResponse": (
        [
            ("healthy", 1, "bool", "optional", "", None, False),
            ("message", 2, "string", "optional", "", None, False),
        ],
        [],
    ),
    "EmbedResponse": (
        [
            ("embedding", 1, "float", "repeated", "", None, False),
            ("prompt_tokens", 2, "uint32", "optional", "", None, False),
            ("embedding_dim", 3, "uint32", "optional", "", None, False),
        ],
        [],
    ),
}

_BODY = ".kvgate.vertexai.HttpBody"
_VERTEX: dict[str, tuple[list[_Field], list[str]]] = {
    # google.api.HttpBody's first two fields (its ``extensions = 3`` is not read)
    "HttpBody": (
        [
            ("content_type", 1, "string", "optional", "", None, False),
            ("data", 2, "bytes", "optional", "", None, False),
        ],
        [],
    ),
    **{
        name: (
            [
                ("endpoint", 1, "string", "optional", "", None, False),
                ("http_body", 2, "message", "optional", _BODY, None, False),
            ],
            [],
        )
        for name in ("ChatCompletionsRequest", "RawPredictRequest", "StreamRawPredictRequest")
    },
}


@functools.cache
def vllm() -> Any:
    """vLLM's gRPC engine messages (``vllm().GenerateRequest`` ...)."""
    return _build("kvgate_vllm_engine.proto", "vllm.grpc.engine", _VLLM)


@functools.cache
def vertexai() -> Any:
    """The Vertex AI request wrappers and HttpBody (``vertexai().RawPredictRequest`` ...)."""
    return _build("kvgate_vertexai.proto", "kvgate.vertexai", _VERTEX)


def _build(file: str, package: str, spec: dict[str, tuple[list[_Field], list[str]]]) -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name=file, package=package, syntax="proto3")
    types = descriptor_pb2.FieldDescriptorProto
    for name, (fields, oneofs) in spec.items():
        msg = fdp.message_type.add(name=name)
        for oneof in oneofs:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name, oneof_index, optional in fields:
            field = msg.field.add(
                name=fname,
                number=number,
                type=getattr(types, f"TYPE_{ftype.upper()}"),
                label=getattr(types, f"LABEL_{label.upper()}"),
            )
            if type_name:
                field.type_name = type_name
            if oneof_index is not None:
                field.oneof_index = oneof_index
            if optional:
                field.proto3_optional = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return SimpleNamespace(
        **{
            name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in spec
        }
    )
