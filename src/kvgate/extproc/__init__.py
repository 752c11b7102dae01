"""Envoy ext_proc endpoint picker (``kvgate epp``): GIE's EPP protocol around kvgate's scheduler.

Modules: :mod:`.server` (the ext_proc stream handler and grpc.aio servicer),
:mod:`.h2server` (the default ext_proc server, on the event loop) over :mod:`.http2` (a
minimal HTTP/2 server codec), :mod:`.director` (candidates ->
scheduler -> destination, completion hooks), :mod:`.messages` (ext_proc message helpers),
:mod:`.usage` (OpenAI usage from SSE or JSON answers), :mod:`.metrics` (GIE's Prometheus
names), :mod:`.health` (gRPC health), :mod:`.tls` (self-signed certificate),
:mod:`.envoyconfig` (adapting examples/envoy/envoy.yaml), :mod:`.app` (wiring),
:mod:`.cli` (flags). Nothing is imported here, so ``kvgate --help`` stays fast.
"""
