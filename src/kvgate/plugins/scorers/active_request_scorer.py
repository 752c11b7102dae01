"""``active-request-scorer`` (llm-d): prefer endpoints with fewer requests kvgate has in flight.

Unlike queue-scorer it does not wait for a metrics scrape: it counts what the gateway itself
sent and has not seen finish.

* Parameters: ``requestTimeout`` (Go duration, default ``"2m"``): a request never reported
  complete stops counting after this long.
* Formula: with ``c`` the in-flight count of an endpoint and ``max`` the highest count among
  the candidates scored, ``score = (max − c) / max``; an endpoint with ``c = 0`` (or
  untracked) scores 1. The maximum is over the candidates, as llm-d-router's scorer since it
  reads ``InFlightLoad`` (llm-d-router#931): in a decode profile, busier prefill endpoints do
  not lift the decode endpoints' scores.
* Inputs: PreRequest (counts ``targets[0]`` of every profile result, e.g. prefill and decode),
  ResponseComplete (uncounts). State: request id → (deadline, endpoints) in deadline order,
  and a count per endpoint; expired entries are dropped lazily on every call (``ctx.clock``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers._duration import get_duration_s
from kvgate.scheduling.types import (
    Clock,
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

TYPE = "active-request-scorer"


class ActiveRequestScorer:
    """Scores by in-flight requests counted at PreRequest (Scorer + PreRequest + ResponseComplete)."""

    type_name = TYPE

    def __init__(self, name: str, clock: Clock, request_timeout_s: float = 120.0) -> None:
        self.name = name
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        # Deadlines grow with insertion (constant TTL, monotonic clock), so the dict's
        # insertion order is deadline order and expiry only ever looks at the front.
        self._inflight: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._counts: dict[str, int] = {}

    def count(self, endpoint_name: str) -> int:
        self._expire()
        return self._counts.get(endpoint_name, 0)

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        self._expire()
        counts = [self._counts.get(e.name, 0) for e in endpoints]
        highest = max(counts, default=0)
        if highest <= 0:
            return {e.name: 1.0 for e in endpoints}
        return {e.name: (highest - c) / highest for e, c in zip(endpoints, counts, strict=True)}

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        self._expire()
        names = tuple(
            r.targets[0].name
            for r in result.profile_results.values()
            if r is not None and r.targets
        )
        self._release(request.request_id)  # a retried request id replaces its earlier entry
        self._inflight[request.request_id] = (self._clock() + self.request_timeout_s, names)
        for name in names:
            self._counts[name] = self._counts.get(name, 0) + 1

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        self._release(request.request_id)
        self._expire()

    def _release(self, request_id: str) -> None:
        entry = self._inflight.pop(request_id, None)
        if entry is None:
            return
        for name in entry[1]:
            left = self._counts.get(name, 0) - 1
            if left > 0:
                self._counts[name] = left
            else:
                self._counts.pop(name, None)

    def _expire(self) -> None:
        now = self._clock()
        inflight = self._inflight
        while inflight:
            request_id, (deadline, _) = next(iter(inflight.items()))
            if deadline > now:
                return
            self._release(request_id)


def create(name: str, params: Params, ctx: PluginContext) -> ActiveRequestScorer:
    return ActiveRequestScorer(name, ctx.clock, get_duration_s(params, "requestTimeout", "2m"))
