"""``/debug/explain``: the dry run over HTTP, for ``kvgate explain`` (both front doors mount it).

* ``POST /debug/explain`` with an OpenAI body (``/v1/chat/completions``'s when it has
  ``messages``, else ``/v1/completions``'s) and the request's headers: the report of
  :func:`kvgate.explain.dryrun.explain_request` as JSON.
* ``GET /debug/explain?request_id=ID``: ``{"logged": ..., "now": ...}``: the request as the
  dashboard's ring recorded it (its scores and winner at the time), and the same request
  scored again now. 404 when the id is not among the last requests kept.

Errors are OpenAI-shaped JSON with the request path's statuses (400 bad body, 404 unknown
model, 503 nothing in rotation).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from kvgate.errors import RequestError, SchedulingError
from kvgate.explain.dryrun import explain_request, fresh_copy, kind_of
from kvgate.http1 import HttpRequest, Response, StreamResponse
from kvgate.openai.errors import error_body, request_error_body
from kvgate.openai.requests import parse_body

if TYPE_CHECKING:
    from kvgate.dashboard.state import DashboardState
    from kvgate.requestcontrol.control import RequestControl
    from kvgate.scheduling.types import Request

PATH = "/debug/explain"
JSON = "application/json"


def _error(status: int, message: str, code: str | None = None) -> Response:
    body = error_body(message, status=status, code=code)
    return Response(status, body, content_type=JSON)


class ExplainRoute:
    """The handler over one request control (and the dashboard's ring, for request ids)."""

    def __init__(self, control: RequestControl, dashboard: DashboardState | None = None) -> None:
        self.control = control
        self.dashboard = dashboard

    async def handle(self, req: HttpRequest) -> Response | StreamResponse:
        try:
            if req.method == "GET":
                report = self._by_request_id(req.query.get("request_id", ""))
                if isinstance(report, Response):
                    return report
            else:
                report = explain_request(self.control, self._parse(await req.read(), req))
        except RequestError as exc:
            return Response(exc.status, request_error_body(exc), content_type=JSON)
        except SchedulingError as exc:
            return _error(503, f"{exc.reason}: {exc}", "no_candidates")
        return Response(body=msgspec.json.encode(report), content_type=JSON)

    def _parse(self, body: bytes, req: HttpRequest) -> Request:
        parsed = parse_body(body)
        ctx = self.control.begin("gateway", PATH)
        return self.control.parse(ctx, kind_of(parsed), body, req.headers, parsed=parsed)

    def _by_request_id(self, request_id: str) -> dict[str, object] | Response:
        if not request_id:
            return _error(400, f"GET {PATH}: expected ?request_id=ID (or POST an OpenAI body)")
        ctx = self.dashboard.find(request_id) if self.dashboard is not None else None
        if ctx is None or ctx.request is None:
            kept = len(self.dashboard.ring) if self.dashboard is not None else 0
            return _error(
                404,
                f"request_id {request_id!r}: not among the last {kept} requests this front door "
                "kept; POST the request body instead",
                "not_found",
            )
        from kvgate.dashboard.state import DashboardState

        logged = DashboardState.request_view(ctx, time.time() - time.perf_counter())
        return {"logged": logged, "now": explain_request(self.control, fresh_copy(ctx.request))}
