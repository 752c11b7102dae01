"""The request director: candidates -> scheduler -> destination, and the completion hooks.

Transport-free (the ext_proc stream handler calls it), so the order of GIE's director
(pkg/epp/requestcontrol/director.go) is visible in one place: narrow the candidates by the
gateway's subset hint, schedule (no candidates -> 503, no pick -> 429), run PreRequest hooks,
and name the destination as the comma-joined ``ip:port`` of every primary target.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.endpoints.pool import EndpointPool
from kvgate.errors import NoCandidatesError
from kvgate.extproc.metrics import EppMetrics
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import Endpoint, Request, ResponseInfo, SchedulingResult

log = logging.getLogger("kvgate.epp")


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and what to add to it."""

    result: SchedulingResult | None  # None for body-less requests (random pick, no hooks)
    endpoint: Endpoint  # the primary target
    destination: str  # comma-joined ip:port of every primary target
    headers: dict[str, str]  # from PreRequest hooks, for the model server


def _has_port(entry: str) -> bool:
    """``ip:port`` / ``[v6]:port`` rather than a bare address."""
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def _normalise(hostport: str) -> str:
    host, _, port = hostport.rpartition(":")
    return f"{host.strip('[]')}:{port}"


class Director:
    """Owns the scheduler and the pool on behalf of every ext_proc stream."""

    def __init__(
        self,
        scheduler: Scheduler,
        pool: EndpointPool,
        metrics: EppMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.pool = pool
        self.metrics = metrics
        self._rng = rng or random.Random(0)

    def candidates(self, subset: Sequence[str] | None) -> list[Endpoint]:
        """Endpoints in rotation, narrowed to the gateway's subset hint.

        GIE matches hint entries by IP (one pod = one IP); kvgate matches ``ip:port``
        entries exactly and bare ``ip`` entries by address, which is the same on a cluster and
        still right when several replicas share an IP (loopback, host networking). An empty
        hint list means the gateway allows nothing: the result is empty (503).
        """
        ready = self.pool.candidates()
        if subset is None:
            return ready
        exact = {_normalise(s) for s in subset if _has_port(s)}
        hosts = {s.strip("[]") for s in subset if not _has_port(s)}
        return [
            e for e in ready if _normalise(e.hostport) in exact or e.address.strip("[]") in hosts
        ]

    def pick(self, request: Request, subset: Sequence[str] | None) -> Decision:
        """Schedule ``request``; raises NoCandidatesError (503) / SchedulingFailedError (429)."""
        candidates = self.candidates(subset)
        started = time.perf_counter()
        try:
            result = self.scheduler.schedule(request, candidates)
        finally:
            self.metrics.scheduler_e2e.observe(time.perf_counter() - started)
        headers = self.scheduler.pre_request(request, result)
        targets = result.primary.targets
        destination = ",".join(t.hostport for t in targets)
        m = self.metrics
        labels = (request.model, request.effective_model)
        m.child(m.requests, *labels).inc()
        m.child(m.running, request.model).inc()
        if log.isEnabledFor(logging.DEBUG):  # one line per request at --v 4 / debug
            scores = {s.endpoint.name: round(s.score, 3) for s in result.primary.scored}
            log.debug(
                "request %s model %s -> %s (profile %s, scores %s)",
                request.request_id,
                request.effective_model,
                destination,
                result.primary_profile_name,
                scores,
            )
        return Decision(result, targets[0], destination, headers)

    def pick_without_body(self, subset: Sequence[str] | None) -> Decision:
        """A request without a body (GET /v1/models): any endpoint in rotation, as GIE does."""
        candidates = self.candidates(subset)
        if not candidates:
            raise NoCandidatesError("no healthy endpoint is available")
        endpoint = self._rng.choice(candidates)
        return Decision(None, endpoint, endpoint.hostport, {})

    def complete(
        self, request: Request, endpoint: Endpoint, info: ResponseInfo, elapsed_s: float
    ) -> None:
        """Run the ResponseComplete hooks once and record the request's metrics."""
        m = self.metrics
        labels = (request.model, request.effective_model)
        m.child(m.running, request.model).dec()
        m.child(m.duration, *labels).observe(elapsed_s)
        if info.prompt_tokens is not None:
            m.child(m.input_tokens, *labels).observe(info.prompt_tokens)
        if info.completion_tokens is not None:
            m.child(m.output_tokens, *labels).observe(info.completion_tokens)
        if not info.ok and (info.status or info.error):  # status 0, no error: not observed
            code = str(info.status) if info.status else (info.error or "unknown")
            m.child(m.errors, *labels, code).inc()
        try:
            self.scheduler.response_complete(request, info, endpoint)
        except Exception:  # a plugin bug must not break the stream
            log.exception("response_complete hook failed for request %s", request.request_id)

    def record_error(self, model: str, status: int) -> None:
        self.metrics.child(self.metrics.errors, model, model, str(status)).inc()
