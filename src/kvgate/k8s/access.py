"""What ``kvgate epp`` asks of the Kubernetes API server, as RBAC needs to grant it.

One list, built from the constants the watching code itself uses, so the Role that
``kvgate render`` writes (kvgate.k8s.render.rbac) cannot drift from the calls the EPP makes:

* discovery (kvgate.k8s.discovery): list + watch pods; get, list + watch InferencePools
  in both API groups (``--pool-group`` picks one; the Role allows either);
* InferenceObjectives (kvgate.k8s.objectives): list + watch in every group of
  ``DEFAULT_API_VERSIONS`` (llm-d's ``llm-d.ai`` and GIE's ``inference.networking.x-k8s.io``);
  API discovery (``GET /apis/{group}/{version}``) needs no grant (system:discovery);
* leader election (kvgate.k8s.lease), only with ``--ha-enable-leader-election``: get,
  create and update ``coordination.k8s.io`` Leases.

Invariant: every request the EPP sends is covered by :func:`epp_api_access` (tests run a
real ``kvgate epp`` and check each request it made against the rendered Role).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvgate.k8s import inferencepool, lease, objectives

__all__ = ["ApiAccess", "epp_api_access"]

#: Verbs of a list-then-watch loop (kvgate.k8s.apiclient).
LIST_WATCH = ("list", "watch")


@dataclass(frozen=True, slots=True)
class ApiAccess:
    """One resource in one API group and the verbs used on it ("" is the core group)."""

    group: str
    resource: str
    verbs: tuple[str, ...]


def epp_api_access(*, leader_election: bool) -> tuple[ApiAccess, ...]:
    """Every (group, resource, verbs) ``kvgate epp`` uses, in a stable order."""
    out = [ApiAccess("", "pods", LIST_WATCH)]
    out += [
        ApiAccess(group, inferencepool.PLURAL, ("get", *LIST_WATCH))
        for group in inferencepool.VERSION_OF_GROUP
    ]
    groups = dict.fromkeys(v.split("/", 1)[0] for v in objectives.DEFAULT_API_VERSIONS)
    out += [ApiAccess(group, objectives.PLURAL, LIST_WATCH) for group in groups]
    if leader_election:
        out.append(ApiAccess(lease.GROUP, lease.RESOURCE, lease.VERBS))
    return tuple(out)
