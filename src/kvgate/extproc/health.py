"""The standard gRPC health service (``grpc.health.v1.Health``) without extra packages.

Kubernetes gRPC probes and Envoy's gRPC health checks call ``Check``. The two messages are
tiny (``HealthCheckRequest{string service = 1}``, ``HealthCheckResponse{enum status = 1}``),
so they are encoded by hand rather than pulling in grpcio-health-checking.

What each service name answers, as llm-d-router's EPP (``cmd/epp/runner/health.go``):

* leader election off: every name, known or not, answers "synced" (SERVING or NOT_SERVING);
* leader election on: ``liveness`` is always SERVING (a standby is alive, so it is not
  restarted); ``readiness``, ``""`` (the whole server, as load balancers ask), ext_proc's
  service name and ``inference-extension`` answer "synced and holding the Lease"; any other
  name is SERVICE_UNKNOWN.

"synced" is the ``is_serving`` callback (discovery synced, not draining). GIE answers
``SERVICE_UNKNOWN`` for ``inference-extension`` under leader election; kvgate treats it as
``readiness``, the name GIE's chart probes with when it runs one replica.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3

LIVENESS = "liveness"
READINESS = "readiness"
EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"
#: The service name GIE's chart probes with when leader election is off.
INFERENCE_EXTENSION = "inference-extension"

#: Names that follow readiness (synced and, under leader election, leading); "" is the whole
#: server, as load balancers ask.
READINESS_SERVICES = frozenset({"", READINESS, EXT_PROC, INFERENCE_EXTENSION})
KNOWN_SERVICES = READINESS_SERVICES | {LIVENESS}


def status_for(service: str, *, ready: bool, leader_election: bool) -> int:
    """The ``HealthCheckResponse.status`` for ``service`` (see the module docstring's table).

    ``ready`` is synced-and-leading under leader election, synced otherwise.
    """
    if not leader_election:
        return SERVING if ready else NOT_SERVING
    if service == LIVENESS:
        return SERVING
    if service in READINESS_SERVICES:
        return SERVING if ready else NOT_SERVING
    return SERVICE_UNKNOWN


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


def health_handler(
    is_serving: Callable[[], bool], *, leader_election: bool = False
) -> grpc.GenericRpcHandler:
    """A handler for ``/grpc.health.v1.Health/Check`` that asks ``is_serving`` each time.

    ``is_serving`` is readiness: synced and, with ``leader_election``, holding the Lease.
    """

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        service = _decode_service(request)
        return _encode_status(
            status_for(service, ready=is_serving(), leader_election=leader_election)
        )

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None
            )
        },
    )
