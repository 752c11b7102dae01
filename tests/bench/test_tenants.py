"""The multi-tenant workload: rates, headers, tenant mix, determinism, and the objectives file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvgate.bench.tenants import (
    FAIRNESS_ID_HEADER,
    OBJECTIVE_HEADER,
    UNIQUE_HEAD_LEN,
    objectives_yaml,
)
from kvgate.bench.workloads import Workload, WorkloadError, build_workload

SMALL = {
    "duration_s": "50",
    "capacity_rps": "4",
    "batch_prompt_len": "64",
    "batch_output_len": "8",
    "interactive_prompt_len": "40",
    "interactive_output_len": "4",
    "interactive_rate": "2",
}


def _by_tenant(w: Workload) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in w.sessions:
        out.setdefault(s.tenant, []).append(s.arrival_s or 0.0)
    return out


def test_two_poisson_tenants_at_their_rates_in_arrival_order() -> None:
    w = build_workload("multi-tenant", SMALL, seed=3)
    assert w.is_trace  # the runner replays the arrival offsets
    arrivals = [s.arrival_s for s in w.sessions]
    assert arrivals == sorted(arrivals)  # type: ignore[type-var]
    assert all(0 <= (a or 0.0) < 50 for a in arrivals)
    tenants = _by_tenant(w)
    assert set(tenants) == {"interactive", "batch"}
    # batch = 3 x capacity = 12/s, interactive 2/s over 50 s: Poisson counts within ~4 sigma
    assert abs(len(tenants["batch"]) - 600) < 4 * 600**0.5
    assert abs(len(tenants["interactive"]) - 100) < 4 * 100**0.5
    for s in w.sessions:
        (turn,) = s.turns
        if s.tenant == "batch":
            assert (turn.prompt_tokens, turn.max_tokens) == (64, 8)
        else:
            assert (turn.prompt_tokens, turn.max_tokens) == (40, 4)


def test_headers_name_the_tenant_and_its_objective() -> None:
    plain = build_workload("multi-tenant", SMALL, seed=1)
    shed = build_workload("multi-tenant", {**SMALL, "batch_sheddable": "true"}, seed=1)
    for w, batch_objective in ((plain, "batch"), (shed, "batch-sheddable")):
        for s in w.sessions:
            headers = dict(s.headers)
            assert headers[FAIRNESS_ID_HEADER] == s.tenant
            expected = "interactive" if s.tenant == "interactive" else batch_objective
            assert headers[OBJECTIVE_HEADER] == expected


def test_deterministic_for_a_seed_and_prompts_share_no_first_block() -> None:
    a = build_workload("multi-tenant", SMALL, seed=7)
    b = build_workload("multi-tenant", SMALL, seed=7)
    c = build_workload("multi-tenant", SMALL, seed=8)
    assert a.sessions == b.sessions
    assert a.sessions != c.sessions
    heads = [s.turns[0].prompt[: UNIQUE_HEAD_LEN * 2] for s in a.sessions]  # type: ignore[index]
    assert len(set(heads)) == len(heads)


def test_batch_rate_and_interactive_only() -> None:
    fixed = build_workload("multi-tenant", {**SMALL, "capacity_rps": "0", "batch_rate": "1"})
    assert abs(len(_by_tenant(fixed)["batch"]) - 50) < 4 * 50**0.5
    alone = build_workload("multi-tenant", {**SMALL, "interactive_only": "true"}, seed=3)
    assert set(_by_tenant(alone)) == {"interactive"}
    # the same interactive arrivals as in the loaded run: a like-for-like reference
    loaded = build_workload("multi-tenant", SMALL, seed=3)
    assert _by_tenant(alone)["interactive"] == _by_tenant(loaded)["interactive"]


def test_without_capacity_the_error_names_the_field() -> None:
    with pytest.raises(WorkloadError, match="capacity_rps"):
        build_workload("multi-tenant", {"duration_s": "1"})


def test_objectives_file_is_three_inference_objectives() -> None:
    w = build_workload("multi-tenant", {**SMALL, "pool_name": "my-pool"})
    docs = list(yaml.safe_load_all(objectives_yaml(w.params)))
    assert [(d["metadata"]["name"], d["spec"]["priority"]) for d in docs] == [
        ("interactive", 1),
        ("batch", 0),
        ("batch-sheddable", -1),
    ]
    for d in docs:
        assert d["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
        assert d["kind"] == "InferenceObjective"
        assert d["spec"]["poolRef"] == {"name": "my-pool"}


def test_objectives_file_loads_as_the_gateway_reads_it(tmp_path: Path) -> None:
    """The contract with ``--objectives FILE``: kvgate's own InferenceObjective loader."""
    from kvgate.flowcontrol.objectives import ObjectiveStore

    path = tmp_path / "objectives.yaml"
    path.write_text(objectives_yaml(build_workload("multi-tenant", SMALL).params))
    store = ObjectiveStore.from_file(path)
    assert {n: store.priority(n) for n in store.names()} == {
        "interactive": 1,
        "batch": 0,
        "batch-sheddable": -1,
    }
