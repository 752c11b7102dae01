"""How the gateway serves: one frozen settings object, filled from flags by the CLI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway serves; the CLI fills it from flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 16 * 1024 * 1024
    max_retries: int = 2  # extra attempts after the first, on other endpoints
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 600.0  # whole upstream exchange, per attempt
    retry_after_s: int = 1
    api_keys: frozenset[str] = frozenset()
    #: ``namespace/name`` for the seed's path shape; None serves any ``/<ns>/<name>/v1/...``.
    service_path: str | None = None
    #: Model names known from configuration, used for 404s before any replica listed models.
    models: frozenset[str] = frozenset()
    #: ``--drain-timeout``: how long requests in flight may run on after SIGTERM.
    shutdown_timeout_s: float = 30.0
    log_requests: bool = True
    #: ``--header-timeout``: a connection whose first request head has not arrived by then is
    #: closed (slowloris); kvgate.http1.server.
    first_request_timeout_s: float = 10.0
