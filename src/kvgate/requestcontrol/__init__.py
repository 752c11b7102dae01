"""The one request path, shared by both front doors (no transport, no I/O of its own).

* :mod:`.control` — :class:`~.control.RequestControl` and :class:`~.control.RequestContext`:
  parse -> candidates -> admission (flow control) -> schedule -> PreRequest -> response ->
  ResponseComplete -> finish, in llm-d's request-control order, with its invariants.
* :mod:`.metrics` — every request-path series, GIE's and the course's names beside kvgate's.
* :mod:`.reqlog` — logging set-up and the one JSON request line per request.

:mod:`kvgate.gateway` (HTTP) and :mod:`kvgate.extproc` (Envoy ext_proc) are thin transports
around it; docs/ARCHITECTURE.md draws the path.
"""
