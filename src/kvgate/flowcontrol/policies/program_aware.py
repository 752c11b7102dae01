"""``program-aware-fairness``: flows take turns by least attained service (llm-d's LAS) or by
session depth (``turn-priority``).

A *program* is a fairness id (``x-gateway-inference-fairness-id`` or
``x-llm-d-inference-fairness-id``; ``default-flow`` without one). The policy charges each
program the tokens its finished requests used, ``prompt + 2 · completion`` (output tokens cost
twice), decayed in wall-clock time with half-life ``lasHalfLifeSeconds`` so a program that was
idle competes again on near-equal terms. When the controller asks which flow of a band goes
next, every non-empty flow is scored

    ``lasWeightService · (1 - norm(service)) + lasWeightHeadWait · norm(head wait)``

with ``norm`` the min-max normalisation over the band's non-empty flows (0.5 when all are
equal); the highest score wins (ties: the lowest fairness id, where llm-d's map order is
random). Programs with no request in flight and no completion for ``evictionTtlSeconds`` are
forgotten, checked every ``evictionSweepSeconds``.

``strategy: turn-priority`` (llm-d-router PR 2116) scores each non-empty flow instead by
``turn + turnPriorityTimeWeight · head wait (s)``, where ``turn`` is the program's dispatches so
far plus one, reset to one when the program's last completion is more than
``turnPriorityInactivitySeconds`` older than the head request's arrival (a session dormant
that long no longer holds its prefix); the highest score wins, a lone waiting flow is taken
as is. Deeper sessions go first; waiting ages a shallow one up.

Roles: a fairness policy (named by a band's ``fairnessPolicyRef``), a PreRequest hook (counts
the program's dispatches and in-flight requests) and a ResponseComplete hook (charges the
tokens). The flow controller and the scheduler share one instance, the declared plugin, so
the service it charges is the service it schedules by.

Parameters (llm-d's, with its defaults): ``strategy`` (``las`` or ``turn-priority``),
``turnPriorityTimeWeight`` (>= 0, 0.05), ``turnPriorityInactivitySeconds`` (>= 0, 120; 0 = no
reset), ``lasWeightService``
(>= 0, 0.8), ``lasWeightHeadWait`` (>= 0, 0.2), ``lasHalfLifeSeconds`` (>= 0, 60; 0 = no
decay), ``evictionTtlSeconds`` (>= 0, 3600; 0 = never forget), ``evictionSweepSeconds`` (> 0,
300). **Difference from llm-d:** no ``program_aware_*`` Prometheus series; the clock is the
plugin context's (``time.monotonic``, the flow controller's too).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvgate.errors import PluginParameterError
from kvgate.flowcontrol.queues import Band, FlowQueue
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import (
    HEADER_FAIRNESS_ID,
    Clock,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

TYPE = "program-aware-fairness"

#: llm-d's newer fairness-id header, read after GIE's as the request path reads them
#: (kvgate.requestcontrol.control, which this core package may not import).
HEADER_LLMD_FAIRNESS_ID = "x-llm-d-inference-fairness-id"

#: llm-d's fairness id for requests without one.
DEFAULT_PROGRAM = "default-flow"

STRATEGIES = ("las", "turn-priority")

#: Attained-service weights of a token (llm-d: output tokens cost twice input tokens).
INPUT_TOKEN_WEIGHT = 1
OUTPUT_TOKEN_WEIGHT = 2


@dataclass(slots=True)
class Program:
    """What the policy knows of one program."""

    service: float = 0.0  # weighted tokens, decayed up to ``decayed_at``
    decayed_at: float | None = None  # clock time the service was last decayed to
    in_flight: int = 0
    dispatched: int = 0
    last_completion: float = 0.0


def program_of(request: Request) -> str:
    headers = request.headers
    return (
        headers.get(HEADER_FAIRNESS_ID) or headers.get(HEADER_LLMD_FAIRNESS_ID) or DEFAULT_PROGRAM
    )


def _norm(value: float, low: float, high: float) -> float:
    return 0.5 if high == low else (value - low) / (high - low)


class ProgramAwareFairness:
    type_name = TYPE
    strict_notes = ("exports no program_aware_* Prometheus series",)

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        weight_service: float = 0.8,
        weight_head_wait: float = 0.2,
        half_life_s: float = 60.0,
        eviction_ttl_s: float = 3600.0,
        eviction_sweep_s: float = 300.0,
        turn_priority: bool = False,
        turn_time_weight: float = 0.05,
        turn_inactivity_s: float = 120.0,
    ) -> None:
        self.name = name
        self.clock = clock
        self.weight_service = weight_service
        self.weight_head_wait = weight_head_wait
        self.half_life_s = half_life_s
        self.eviction_ttl_s = eviction_ttl_s
        self.eviction_sweep_s = eviction_sweep_s
        self.turn_priority = turn_priority
        self.turn_time_weight = turn_time_weight
        self.turn_inactivity_s = turn_inactivity_s
        self.programs: dict[str, Program] = {}
        self._next_sweep = clock() + eviction_sweep_s

    def _program(self, program_id: str, now: float) -> Program:
        program = self.programs.get(program_id)
        if program is None:
            program = self.programs[program_id] = Program(last_completion=now)
        return program

    def service(self, program_id: str, now: float | None = None) -> float:
        """``program_id``'s attained service, decayed to ``now``."""
        now = self.clock() if now is None else now
        program = self._program(program_id, now)
        if program.decayed_at is not None and self.half_life_s > 0 and now > program.decayed_at:
            program.service *= 2.0 ** (-(now - program.decayed_at) / self.half_life_s)
        program.decayed_at = now
        return program.service

    # ---- fairness policy -----------------------------------------------------------------

    def pick(self, band: Band) -> FlowQueue | None:
        now = self.clock()
        self._sweep(now)
        if self.turn_priority:
            return self._pick_deepest(band, now)
        scored: list[tuple[str, float, float]] = []  # fairness id, service, head wait (ms)
        for fid in sorted(band.flows):
            queue = band.flows[fid]
            head = queue.head() if queue.size > 0 else None
            if head is not None:
                scored.append((fid, self.service(fid, now), (now - head.enqueued_at) * 1000.0))
        if not scored:
            return None
        services = [s for _, s, _ in scored]
        waits = [w for _, _, w in scored]
        low_s, high_s, low_w, high_w = min(services), max(services), min(waits), max(waits)
        best_id, best_score = scored[0][0], float("-inf")
        for fid, service, wait in scored:
            score = self.weight_service * (1.0 - _norm(service, low_s, high_s))
            score += self.weight_head_wait * _norm(wait, low_w, high_w)
            if score > best_score:
                best_id, best_score = fid, score
        return band.flows[best_id]

    def turn(self, program_id: str, arrived_at: float) -> int:
        """The turn number of ``program_id``'s request that arrived at ``arrived_at``."""
        program = self._program(program_id, arrived_at)
        idle_s = arrived_at - program.last_completion
        if program.dispatched and 0 < self.turn_inactivity_s < idle_s:
            return 1
        return program.dispatched + 1

    def _pick_deepest(self, band: Band, now: float) -> FlowQueue | None:
        waiting = [(fid, q) for fid, q in sorted(band.flows.items()) if q.size > 0]
        best: FlowQueue | None = None
        best_score = float("-inf")
        for fid, queue in waiting:
            head = queue.head()
            if head is None:
                continue
            if len(waiting) == 1:
                return queue
            wait_s = max(0.0, now - head.enqueued_at)
            score = self.turn(fid, head.enqueued_at) + self.turn_time_weight * wait_s
            if score > best_score:
                best, best_score = queue, score
        return best

    # ---- request hooks -------------------------------------------------------------------

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        program = self._program(program_of(request), self.clock())
        program.dispatched += 1
        program.in_flight += 1

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        now = self.clock()
        program_id = program_of(request)
        cost = INPUT_TOKEN_WEIGHT * (response.prompt_tokens or 0)
        cost += OUTPUT_TOKEN_WEIGHT * (response.completion_tokens or 0)
        self.service(program_id, now)  # decay first, then charge
        program = self.programs[program_id]
        program.service += cost
        program.in_flight = max(0, program.in_flight - 1)
        program.last_completion = now

    def _sweep(self, now: float) -> None:
        """Forget idle programs (none in flight, no completion within the TTL)."""
        if self.eviction_ttl_s <= 0 or now < self._next_sweep:
            return
        self._next_sweep = now + self.eviction_sweep_s
        idle = [
            pid
            for pid, p in self.programs.items()
            if p.in_flight == 0 and now - p.last_completion > self.eviction_ttl_s
        ]
        for pid in idle:
            del self.programs[pid]


def create(name: str, params: Params, ctx: PluginContext) -> ProgramAwareFairness:
    strategy = params.get_str("strategy", "las") or "las"
    if strategy not in STRATEGIES:
        raise PluginParameterError(
            "strategy",
            f"unknown scoring strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}",
        )
    values: dict[str, float] = {}
    for key, default in (
        ("lasWeightService", 0.8),
        ("lasWeightHeadWait", 0.2),
        ("lasHalfLifeSeconds", 60.0),
        ("evictionTtlSeconds", 3600.0),
        ("turnPriorityTimeWeight", 0.05),
        ("turnPriorityInactivitySeconds", 120.0),
    ):
        values[key] = params.get_float(key, default, minimum=0.0)
    sweep = params.get_float("evictionSweepSeconds", 300.0)
    if sweep <= 0:
        raise PluginParameterError("evictionSweepSeconds", f"expected a number > 0, got {sweep:g}")
    return ProgramAwareFairness(
        name,
        ctx.clock,
        weight_service=values["lasWeightService"],
        weight_head_wait=values["lasWeightHeadWait"],
        half_life_s=values["lasHalfLifeSeconds"],
        eviction_ttl_s=values["evictionTtlSeconds"],
        eviction_sweep_s=sweep,
        turn_priority=strategy == "turn-priority",
        turn_time_weight=values["turnPriorityTimeWeight"],
        turn_inactivity_s=values["turnPriorityInactivitySeconds"],
    )
