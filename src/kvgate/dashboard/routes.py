"""The dashboard's HTTP handlers, shared by both front doors.

``kvgate serve`` / ``kvgate up`` mount them in the gateway's route table, ``kvgate epp`` on its
metrics port; both call the same :class:`DashboardRoutes` (handlers of :mod:`kvgate.http1`,
the server of both front doors' HTTP ports):

=========================  ==========================================================
``GET /dashboard``          the page (``static/index.html``; script and style beside it)
``GET /dashboard/<asset>``  ``dashboard.js``, ``dashboard.css`` (bundled, no CDN)
``GET /dashboard/snapshot`` the current snapshot as JSON
``GET /dashboard/events``   server-sent events: one ``data: <snapshot>`` every
                            ``push_interval_s`` (0.5 s) while the client stays connected
=========================  ==========================================================

Nothing is computed for the page while no client asks: the SSE loop lives in the handler of a
connected client and ends when it leaves or :meth:`DashboardRoutes.close` runs (at shutdown,
so a page left open does not hold the server's graceful stop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from importlib import resources

from kvgate.dashboard.state import SNAPSHOT_MIN_INTERVAL_S, DashboardState
from kvgate.http1 import HttpRequest, Response, StreamResponse

#: Bundled files served under /dashboard/, with their content types.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

Handler = Callable[[HttpRequest], Awaitable[Response | StreamResponse]]


def _read_asset(name: str) -> bytes:
    return (resources.files("kvgate.dashboard") / "static" / name).read_bytes()


class DashboardRoutes:
    """Handlers over one :class:`DashboardState`; :meth:`table` lists them by path."""

    def __init__(self, state: DashboardState, *, push_interval_s: float = 0.5) -> None:
        if push_interval_s < SNAPSHOT_MIN_INTERVAL_S:
            raise ValueError(f"push_interval_s: expected >= {SNAPSHOT_MIN_INTERVAL_S}")
        self.state = state
        self.push_interval_s = push_interval_s
        self.clients = 0  # connected /dashboard/events clients
        self._closing = asyncio.Event()
        self._assets: dict[str, bytes] = {}

    def table(self) -> dict[str, Handler]:
        """``path -> handler`` for GET."""
        routes: dict[str, Handler] = {
            "/dashboard": self.page,
            "/dashboard/": self.page,
            "/dashboard/snapshot": self.snapshot,
            "/dashboard/events": self.events,
        }
        for name in ASSETS:
            if name != "index.html":
                routes[f"/dashboard/{name}"] = self._asset_handler(name)
        return routes

    def close(self) -> None:
        """End every event stream now (shutdown)."""
        self._closing.set()

    def _asset(self, name: str) -> Response:
        body = self._assets.get(name)
        if body is None:
            body = self._assets[name] = _read_asset(name)
        return Response(
            body=body, headers={"Content-Type": ASSETS[name], "Cache-Control": "no-cache"}
        )

    def _asset_handler(self, name: str) -> Handler:
        async def handler(_: HttpRequest) -> Response | StreamResponse:
            return self._asset(name)

        return handler

    async def page(self, _: HttpRequest) -> Response | StreamResponse:
        return self._asset("index.html")

    async def snapshot(self, _: HttpRequest) -> Response | StreamResponse:
        return Response(
            body=self.state.snapshot_bytes(),
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache"},
        )

    async def events(self, req: HttpRequest) -> Response | StreamResponse:
        resp = StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not hold the stream back
            }
        )
        await resp.prepare(req)
        self.clients += 1
        try:
            # the browser reconnects after 2 s if the stream drops
            await resp.write(b"retry: 2000\n\n")
            while not self._closing.is_set():
                await resp.write(b"data: " + self.state.snapshot_bytes() + b"\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.push_interval_s)
        except (ConnectionError, RuntimeError):  # the client left (RuntimeError: closed transport)
            pass
        finally:
            self.clients -= 1
        return resp


def dashboard_url(base_url: str) -> str:
    """Where the page is, given a front door's base URL (``http://host:port``)."""
    return base_url.rstrip("/") + "/dashboard"
