"""The ``multi-tenant`` workload and the InferenceObjective file it needs.

Two tenants share one pool, each with its own seeded Poisson arrival process:

- ``interactive``: short prompts at a steady rate well under the pool's capacity, sent with
  objective ``interactive`` (priority 1);
- ``batch``: long prompts flooding the pool at ``batch_load`` × its capacity, sent with
  objective ``batch`` (priority 0) or, with ``batch_sheddable``, ``batch-sheddable``
  (priority -1: llm-d sheds it with 429 while the pool is saturated).

Every request carries llm-d's headers ``x-gateway-inference-fairness-id: <tenant>`` and
``x-gateway-inference-objective: <objective>``; :func:`objectives_yaml` writes the matching
InferenceObjective documents (``inference.networking.x-k8s.io/v1alpha2``) for the gateway's
``--objectives FILE``. Sessions carry their own arrival offsets (``Session.arrival_s``, model
seconds), so the runner replays them like a trace; the same seed gives the same requests at
the same offsets. Invariants: every session has exactly one turn; arrivals lie in
``[0, duration_s)``; sessions are sorted by arrival.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # workloads imports this module; the builder imports it back at call time
    from kvgate.bench.workloads import Api, Session

FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
OBJECTIVE_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"

#: Tokens at the head of every prompt drawn afresh: with a shared body after them, no two
#: prompts share a first KV block, so no request hits another's prefix cache, and building a
#: few thousand 2k-token prompts costs one body's draw instead of thousands.
UNIQUE_HEAD_LEN = 32


@dataclass(frozen=True, slots=True)
class Objective:
    """One InferenceObjective: ``name`` is what the objective header selects."""

    name: str
    priority: int  # llm-d: higher is served first; < 0 is sheddable


#: Every objective the workload may send; the file lists all of them, the headers pick one.
OBJECTIVES: tuple[Objective, ...] = (
    Objective("interactive", 1),
    Objective("batch", 0),
    Objective("batch-sheddable", -1),
)


@dataclass(frozen=True, slots=True)
class MultiTenantParams:
    duration_s: float = 20.0  # arrivals span this many (model) seconds
    #: the pool's capacity in batch requests/s; 0: ``bench compare`` estimates it from the
    #: cluster (kvgate.bench.capacity); ``bench run`` needs it or ``batch_rate``
    capacity_rps: float = 0.0
    batch_load: float = 3.0  # batch arrivals = batch_load × capacity_rps
    batch_rate: float = 0.0  # > 0: batch arrivals per second, instead of batch_load
    batch_prompt_len: int = 2048
    batch_output_len: int = 256
    batch_sheddable: bool = False  # objective batch-sheddable (priority -1) instead of batch
    interactive_rate: float = 4.0  # interactive arrivals per second
    interactive_prompt_len: int = 128
    interactive_output_len: int = 32
    interactive_only: bool = False  # the unloaded reference: the interactive tenant alone
    pool_name: str = "static"  # spec.poolRef.name of the objectives (kvgate's static pool)


def batch_rate(p: MultiTenantParams) -> float:
    """The batch tenant's arrival rate (requests/s); 0 with ``interactive_only``."""
    if p.interactive_only:
        return 0.0
    return p.batch_rate if p.batch_rate > 0 else p.batch_load * p.capacity_rps


def batch_objective(p: MultiTenantParams) -> Objective:
    return OBJECTIVES[2] if p.batch_sheddable else OBJECTIVES[1]


def poisson_offsets(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate``/s in ``[0, duration_s)``."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def multi_tenant(p: MultiTenantParams, api: Api, seed: int) -> list[Session]:
    """The two tenants' sessions, merged in arrival order (see the module docstring)."""
    from kvgate.bench.workloads import Session, TextGen, WorkloadError, _turn

    rate_b = batch_rate(p)
    if not p.interactive_only and rate_b <= 0:
        raise WorkloadError(
            "multi-tenant: capacity_rps: expected the pool's capacity in requests/s (> 0) "
            "or batch_rate > 0, got 0 (bench compare fills it in from the cluster)"
        )
    if p.duration_s <= 0:
        raise WorkloadError(f"multi-tenant: duration_s: expected > 0, got {p.duration_s}")
    for key in ("batch_prompt_len", "interactive_prompt_len"):
        if getattr(p, key) <= UNIQUE_HEAD_LEN:
            raise WorkloadError(
                f"multi-tenant: {key}: expected > {UNIQUE_HEAD_LEN} tokens, got {getattr(p, key)}"
            )
    gen = TextGen(seed)
    tenants: list[tuple[str, Objective, float, int, int, int]] = [
        ("interactive", OBJECTIVES[0], p.interactive_rate, p.interactive_prompt_len,
         p.interactive_output_len, 11),
        ("batch", batch_objective(p), rate_b, p.batch_prompt_len, p.batch_output_len, 12),
    ]  # fmt: skip
    sessions: list[Session] = []
    for tenant, objective, rate, prompt_len, output_len, salt in tenants:
        body = gen.text(prompt_len - UNIQUE_HEAD_LEN)
        headers = ((FAIRNESS_ID_HEADER, tenant), (OBJECTIVE_HEADER, objective.name))
        offsets = poisson_offsets(random.Random(seed * 1000 + salt), rate, p.duration_s)
        for k, offset in enumerate(offsets):
            prompt = gen.text(UNIQUE_HEAD_LEN) + body
            turn = _turn(api, [("user", prompt)], prompt_len, output_len, group=tenant)
            sessions.append(
                Session(f"{tenant[0]}{k}", (turn,), offset, tenant=tenant, headers=headers)
            )
    sessions.sort(key=lambda s: (s.arrival_s or 0.0, s.session_id))
    return sessions


def objectives_yaml(params: Mapping[str, Any] | MultiTenantParams) -> str:
    """InferenceObjective documents for every objective the workload may send."""
    pool = params.pool_name if isinstance(params, MultiTenantParams) else params["pool_name"]
    docs = []
    for o in OBJECTIVES:
        docs.append(
            f"apiVersion: {OBJECTIVE_API_VERSION}\n"
            "kind: InferenceObjective\n"
            "metadata:\n"
            f"  name: {o.name}\n"
            "spec:\n"
            f"  priority: {o.priority}\n"
            "  poolRef:\n"
            f"    name: {pool}\n"
        )
    return "---\n".join(docs)


def tenant_names(sessions: Sequence[Session]) -> list[str]:
    """Tenants in order of first appearance ('' for sessions without one)."""
    seen: dict[str, None] = {}
    for s in sessions:
        seen.setdefault(s.tenant, None)
    return list(seen)
