"""The operator's live routing dashboard (``/dashboard``), served by both front doors.

:mod:`.state` keeps the last requests and per-interval series, fed by one hook on
:class:`~kvgate.requestcontrol.control.RequestControl`; :mod:`.routes` serves the bundled page,
its JSON snapshot and the server-sent-event stream. This package imports neither
:mod:`kvgate.gateway` nor :mod:`kvgate.extproc` (both import it).
"""

from kvgate.dashboard.routes import DashboardRoutes, dashboard_url
from kvgate.dashboard.state import DashboardState

__all__ = ["DashboardRoutes", "DashboardState", "dashboard_url"]
