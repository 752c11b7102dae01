"""A tiny OTLP/gRPC trace receiver, run as its own process: what an OpenTelemetry collector
would receive from ``kvgate serve --tracing`` / ``kvgate epp --tracing=true``.

    python tests/support/otlp_receiver.py --port 4317 --out spans.jsonl

It serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with the generated
classes of the ``opentelemetry-proto`` package (the collector itself is not on PyPI), writes
one JSON line per received span (``service``, ``name``, ``kind``, hex ``trace_id`` /
``span_id`` / ``parent_span_id``, ``attributes``, ``status``), flushed at once, and creates
``--out`` only once it is listening, so a test waits for that file to exist.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc
from opentelemetry.proto.common.v1 import common_pb2

from support.procs import Proc, free_port, wait_until


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attributes(attrs: Sequence[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attrs}


class _TraceService(ts_grpc.TraceServiceServicer):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def Export(  # the gRPC method's name
        self, request: ts.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ts.ExportTraceServiceResponse:
        lines = []
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    record = {
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "scope": ss.scope.name,
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": _attributes(span.attributes),
                        "status": span.status.code,
                    }
                    lines.append(json.dumps(record) + "\n")
        with self.lock:
            self.out.writelines(lines)
            self.out.flush()
        return ts.ExportTraceServiceResponse()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    partial = args.out.with_suffix(".partial")
    with open(partial, "w") as out:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ts_grpc.add_TraceServiceServicer_to_server(_TraceService(out), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        server.start()
        partial.rename(args.out)  # the file appears once the port is listening
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        server.stop(grace=1).wait()
    return 0


@dataclass(frozen=True)
class OtlpReceiver:
    endpoint: str  # http://127.0.0.1:PORT, for OTEL_EXPORTER_OTLP_ENDPOINT
    out: Path
    proc: Proc

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far."""
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def wait_for(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
    ) -> list[dict[str, Any]]:
        wait_until(lambda: check(self.spans()), timeout_s=timeout_s, what=what)
        return self.spans()


def start_otlp_receiver(spawn: Callable[..., Proc], folder: Path) -> OtlpReceiver:
    """Start the receiver on a free port and wait (10 s at most) until it listens."""
    import sys

    port = free_port()
    out = folder / "otlp-spans.jsonl"
    script = Path(__file__).resolve()
    tests_dir = str(script.parent.parent)
    proc = spawn(
        [sys.executable, str(script), "--port", str(port), "--out", str(out)],
        name="otlp-receiver",
        env={"PYTHONPATH": tests_dir},
    )

    def listening() -> bool:
        if not proc.alive():
            raise RuntimeError(f"otlp receiver exited:\n{proc.log()[-2000:]}")
        return out.exists()

    wait_until(listening, timeout_s=10, what="OTLP receiver listening")
    return OtlpReceiver(f"http://127.0.0.1:{port}", out, proc)


if __name__ == "__main__":
    raise SystemExit(main())
