"""kvgate's exception tree.

Every error kvgate raises on purpose derives from :class:`KvgateError`; third-party
exceptions are converted at the edge (``raise ... from exc``)::

    KvgateError
    ├── ConfigError            a configuration file is wrong; carries one Problem per mistake
    ├── PluginParameterError   a plugin's parameters are wrong (wrapped into ConfigError by the loader)
    ├── RequestError           a client request is wrong -> HTTP 4xx in OpenAI's error shape
    │   ├── BadRequestError        400
    │   ├── AuthenticationError    401
    │   ├── ModelNotFoundError     404
    │   └── PayloadTooLargeError   413
    ├── SchedulingError        the scheduler could not pick
    │   ├── NoCandidatesError      no healthy endpoint for the request -> 503 + Retry-After
    │   ├── SchedulingFailedError  a profile failed / every endpoint filtered out -> 429 (as llm-d)
    │   └── FlowRejected           flow control refused or gave up on the request -> 429 / 503
    ├── UpstreamError          the chosen model server failed (connection, 5xx, timeout)
    └── EngineError            a model server process could not be prepared or launched
"""

from __future__ import annotations

from dataclasses import dataclass


class KvgateError(Exception):
    """Base of every error kvgate raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a configuration file.

    ``path`` is a dotted field path such as ``schedulingProfiles[default].plugins[2].pluginRef``;
    ``line``/``column`` are 1-based: where the syntax error or the named field is, when known.
    """

    file: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(KvgateError):
    """A configuration file is invalid. ``problems`` lists every mistake found, one line each."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginParameterError(KvgateError):
    """A plugin's ``parameters`` are invalid; ``field`` names the parameter (may be empty)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class RequestError(KvgateError):
    """A client request is invalid. ``status`` is the HTTP status, ``param`` the offending field."""

    status: int = 400
    error_type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        self.message = message
        self.param = param
        self.code = code
        super().__init__(message)


class BadRequestError(RequestError):
    status = 400


class AuthenticationError(RequestError):
    status = 401
    error_type = "authentication_error"


class ModelNotFoundError(RequestError):
    status = 404
    error_type = "not_found_error"


class PayloadTooLargeError(RequestError):
    status = 413


class SchedulingError(KvgateError):
    """The request could not be given an endpoint (admission or scheduling).

    ``reason`` names the failure in logs and counters, ``code`` is OpenAI's error ``code``,
    ``retry_after_s`` (when set) becomes a ``Retry-After`` header.
    """

    status: int = 500
    reason: str = "scheduling_error"
    code: str | None = None
    retry_after_s: float | None = None


class NoCandidatesError(SchedulingError):
    """No healthy endpoint can serve the request (HTTP 503 with Retry-After)."""

    status = 503
    reason = "no_candidates"
    retry_after_s = 1.0


class SchedulingFailedError(SchedulingError):
    """Scheduling ran but produced no target, e.g. every endpoint was filtered out (HTTP 429)."""

    status = 429
    reason = "scheduling_failed"
    code = "scheduling_failed"


class FlowRejected(SchedulingError):
    """Flow control did not admit the request (kvgate.flowcontrol.controller).

    ``reason`` is one of ``capacity`` (queue limits, 429), ``ttl_expired`` (waited its whole
    TTL, 429; 503 when the pool has no endpoints), ``shed`` (sheddable while saturated, 429),
    ``evicted`` (429) or ``shutdown`` (503). ``code`` is the OpenAI error ``code``;
    ``dropped_reason`` the value of llm-d's ``x-llm-d-request-dropped-reason`` header.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int,
        code: str,
        dropped_reason: str,
        retry_after_s: float | None = None,
    ) -> None:
        self.reason = reason
        self.message = message
        self.status = status
        self.code = code
        self.dropped_reason = dropped_reason
        self.retry_after_s = retry_after_s
        super().__init__(message)


class UpstreamError(KvgateError):
    """The chosen model server failed before or while answering."""


class EngineError(KvgateError):
    """A model server could not be prepared, installed or launched; the message says what to do."""
