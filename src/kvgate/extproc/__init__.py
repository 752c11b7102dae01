"""The Envoy ext_proc front door (``kvgate epp``): GIE's EPP protocol around the one request path.

* :mod:`.app` — the process: flags -> pool, discovery, scraper, scheduler, request control,
  the ext_proc server, gRPC health and the metrics port; run until SIGINT/SIGTERM.
* :mod:`.stream` — :class:`~.stream.RequestStream`, one ext_proc stream's state machine around
  :class:`kvgate.requestcontrol.control.RequestControl` (shared with the HTTP gateway), and
  the grpc.aio servicer.
* :mod:`.director` — what only the EPP needs: subset hints, body-less picks, its two series.
* :mod:`.h2server` — the default ext_proc server on the event loop, over :mod:`.http2` (a
  minimal HTTP/2 server codec); :mod:`.messages` — ext_proc message helpers.
* :mod:`.health` (gRPC health), :mod:`.tls` (self-signed certificate), :mod:`.envoyconfig`
  (adapting examples/envoy/envoy.yaml), :mod:`.cli` (GIE's flags).

Nothing is imported here, so ``kvgate --help`` stays fast.
"""
