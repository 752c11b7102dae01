"""The standard gRPC health service (``grpc.health.v1.Health``) without extra packages.

Kubernetes gRPC probes and Envoy's gRPC health checks call ``Check``. The two messages are
tiny (``HealthCheckRequest{string service = 1}``, ``HealthCheckResponse{enum status = 1}``),
so they are encoded by hand rather than pulling in grpcio-health-checking.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3

#: Service names the EPP answers for; "" is the whole server (GIE answers its own name too).
KNOWN_SERVICES = frozenset(
    {"", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"}
)


def _decode_service(data: bytes) -> str:
    """Read field 1 (string) of HealthCheckRequest; unknown fields are skipped."""
    i = 0
    service = ""
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if field == 1:
                service = data[i : i + length].decode("utf-8", "replace")
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            break
    return service


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while i < len(data):
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return value, i


def _encode_status(status: int) -> bytes:
    return bytes([0x08, status])


def health_handler(is_serving: Callable[[], bool]) -> grpc.GenericRpcHandler:
    """A handler for ``/grpc.health.v1.Health/Check`` that asks ``is_serving`` each time."""

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        service = _decode_service(request)
        if service not in KNOWN_SERVICES:
            return _encode_status(SERVICE_UNKNOWN)
        return _encode_status(SERVING if is_serving() else NOT_SERVING)

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None
            )
        },
    )
