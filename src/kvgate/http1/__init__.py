"""kvgate's HTTP/1.1 server, for both front doors' HTTP ports.

Modules:

* :mod:`.server` -- connections, framing, limits, drain (:class:`HttpServer`); parsing by httptools.
* :mod:`.messages` -- :class:`HttpRequest`, :class:`Response`, :class:`StreamResponse`.
"""

from kvgate.http1.messages import HttpRequest, Response, StreamResponse
from kvgate.http1.server import Handler, HttpServer

__all__ = ["Handler", "HttpRequest", "HttpServer", "Response", "StreamResponse"]
