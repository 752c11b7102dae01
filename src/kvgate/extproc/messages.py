"""Building and reading Envoy ext_proc v3 messages.

Small pure functions over the generated protobuf classes (from the ``xds-protos`` wheel), so
the stream handler in :mod:`kvgate.extproc.stream` reads as the protocol does. Two Envoy
quirks are handled here once:

* Envoy 1.40 sends header values in ``HeaderValue.raw_value`` (bytes) and leaves ``value``
  empty, so :func:`header_map` reads ``raw_value`` first; mutations set ``raw_value`` too.
* Header mutations default to ``APPEND_IF_EXISTS_OR_ADD``; a client-sent copy of a routing
  header would then survive next to ours, so every header we set overwrites.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

#: GIE re-sends the body in chunks no larger than this (pkg/common/chunking.go).
MAX_BODY_CHUNK_BYTES = 62_000

#: Namespace of the dynamic metadata Envoy's load balancer reads.
LB_METADATA_NAMESPACE = "envoy.lb"
#: Namespace of the subset hint a gateway may send in the request's metadata context.
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"

_OVERWRITE = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_map(headers: ep.HttpHeaders) -> dict[str, str]:
    """Lower-cased header name -> value; repeated headers are comma-joined."""
    result: dict[str, str] = {}
    for h in headers.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        if key in result:
            result[key] = f"{result[key]},{value}"
        else:
            result[key] = value
    return result


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> ep.HeaderMutation:
    """Overwrite (never append) ``set_headers`` and drop ``remove``."""
    return ep.HeaderMutation(
        set_headers=[
            core.HeaderValueOption(
                header=core.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=sorted(set(remove)),
    )


def lb_metadata(fields: Mapping[str, str]) -> struct_pb2.Struct:
    """``{"envoy.lb": fields}`` as the Struct ProcessingResponse.dynamic_metadata wants."""
    outer = struct_pb2.Struct()
    outer.get_or_create_struct(LB_METADATA_NAMESPACE).update(dict(fields))
    return outer


def dynamic_metadata(namespaces: Mapping[str, Mapping[str, float]]) -> struct_pb2.Struct:
    """``{namespace: {key: number}}`` as ProcessingResponse.dynamic_metadata (what
    request-attribute-reporter reports when the response ends)."""
    outer = struct_pb2.Struct()
    for namespace, fields in namespaces.items():
        outer.get_or_create_struct(namespace).update(dict(fields))
    return outer


def subset_hint(request: ep.ProcessingRequest, key: str) -> list[str] | None:
    """The ``ip:port`` list under ``envoy.lb.subset_hint/<key>``, or None when absent.

    A present but empty list is returned as ``[]`` (GIE answers 503 then).
    """
    if not request.HasField("metadata_context"):
        return None
    hint = request.metadata_context.filter_metadata.get(SUBSET_HINT_NAMESPACE)
    if hint is None or key not in hint.fields:
        return None
    value = hint.fields[key]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [v.string_value for v in value.list_value.values if v.string_value]
    if kind == "string_value":
        return [s.strip() for s in value.string_value.split(",") if s.strip()]
    return []


def chunks(body: bytes, size: int = MAX_BODY_CHUNK_BYTES) -> Iterator[bytes]:
    """``body`` in pieces of at most ``size`` bytes; one empty piece for an empty body."""
    if not body:
        yield b""
        return
    for start in range(0, len(body), size):
        yield body[start : start + size]


def streamed_body_responses(body: bytes, *, request_side: bool) -> list[ep.ProcessingResponse]:
    """The body as FULL_DUPLEX_STREAMED replies, end_of_stream on the last one."""
    pieces = list(chunks(body))
    out = []
    for i, piece in enumerate(pieces):
        common = ep.CommonResponse(
            body_mutation=ep.BodyMutation(
                streamed_response=ep.StreamedBodyResponse(
                    body=piece, end_of_stream=i == len(pieces) - 1
                )
            )
        )
        if request_side:
            out.append(ep.ProcessingResponse(request_body=ep.BodyResponse(response=common)))
        else:
            out.append(ep.ProcessingResponse(response_body=ep.BodyResponse(response=common)))
    return out


def immediate_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, details: str = ""
) -> ep.ProcessingResponse:
    """End the HTTP request here with ``status`` and ``body`` (Envoy never calls upstream)."""
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=header_mutation({"content-type": "application/json", **(headers or {})}),
            body=body,
            details=details,
        )
    )


def body_mode_name(mode: int) -> str:
    """The ProcessingMode.BodySendMode enum name (``BUFFERED``, ``FULL_DUPLEX_STREAMED``...)."""
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm

    return str(pm.ProcessingMode.BodySendMode.Name(mode))


def body_mode_value(name: str) -> int:
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm

    return int(pm.ProcessingMode.BodySendMode.Value(name))


__all__: Sequence[str] = (
    "LB_METADATA_NAMESPACE",
    "MAX_BODY_CHUNK_BYTES",
    "SUBSET_HINT_NAMESPACE",
    "body_mode_name",
    "body_mode_value",
    "chunks",
    "dynamic_metadata",
    "header_map",
    "header_mutation",
    "immediate_response",
    "lb_metadata",
    "streamed_body_responses",
    "subset_hint",
)
