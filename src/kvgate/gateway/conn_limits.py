"""Bounds on what a client connection may cost before it sends a request.

aiohttp's low-level server has no timeout on receiving a request's head: a client that opens
a connection and sends nothing, or drips a header a byte at a time (slowloris), holds its
connection and buffers for as long as it likes, and an idle kept-alive connection is kept
for aiohttp's ``keepalive_timeout`` (an hour by default in the low-level server).
:class:`BoundedServer` closes a connection whose first request head has not arrived within
``first_request_timeout_s``, and passes ``keepalive_timeout_s`` (the idle time allowed
between requests) to every connection. aiohttp logs every malformed request (an oversized
header, bad framing) as an error with a traceback, so a hostile client could fill the log;
:class:`OneLineLogger` logs those as one warning line each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

#: nginx's client_header_timeout default is 60 s; a few seconds is plenty on a network.
DEFAULT_FIRST_REQUEST_TIMEOUT_S = 10.0
#: web.Application's default idle time between requests on a kept-alive connection.
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0


class OneLineLogger(logging.Logger):
    """aiohttp's per-connection logger: a malformed request is one warning line, no traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if str(msg).startswith("Error handling request"):
            reason = exc_info if isinstance(exc_info, BaseException) else "malformed request"
            self.warning("%s: %s", str(msg) % args, reason)
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)


def _http_logger() -> OneLineLogger:
    logger = OneLineLogger("kvgate.gateway.http")
    logger.parent = logging.getLogger("kvgate.gateway")
    return logger


class BoundedServer(web.Server):
    """``web.Server`` whose connections must send a request head within a deadline."""

    def __init__(
        self,
        handler: Any,
        *,
        first_request_timeout_s: float = DEFAULT_FIRST_REQUEST_TIMEOUT_S,
        keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("logger", _http_logger())
        super().__init__(handler, keepalive_timeout=keepalive_timeout_s, **kwargs)
        self.first_request_timeout_s = first_request_timeout_s
        #: connections closed because no request head came in time (for tests and metrics)
        self.num_closed_slow = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        asyncio.get_running_loop().call_later(
            self.first_request_timeout_s, self._check_first_request, handler, transport
        )

    def _check_first_request(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        # aiohttp counts a request once its head is parsed (RequestHandler._request_count);
        # later requests on the connection are bounded by keepalive_timeout instead
        if handler._request_count == 0 and not transport.is_closing():
            self.num_closed_slow += 1
            transport.abort()
