"""InferenceObjective name -> priority, the source of a request's flow-control priority.

A request names its objective in ``x-gateway-inference-objective``; an unknown or absent name
means priority 0 (llm-d's default). Objectives come from a YAML file of one or more
``InferenceObjective`` documents (``kvgate serve --objectives FILE``) or from the Kubernetes
API (kvgate.k8s.objectives). Accepted apiVersions: GIE's published
``inference.networking.x-k8s.io/v1alpha2`` and llm-d-router's ``llm-d.ai/v1alpha2``.
Fields read: ``metadata.name``, ``spec.priority`` (integer; unset = 0; < 0 sheddable) and
``spec.poolRef`` (``{group?, kind?, name}``, required by the CRD; kept for filtering by pool).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvgate.config.documents import describe
from kvgate.errors import ConfigError, Problem

KIND = "InferenceObjective"
API_VERSIONS: tuple[str, ...] = ("inference.networking.x-k8s.io/v1alpha2", "llm-d.ai/v1alpha2")


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    priority: int  # < 0: sheddable
    pool: str  # spec.poolRef.name


class ObjectiveStore:
    """The known objectives; replaced or updated whole objects at a time (watch events)."""

    def __init__(self, objectives: Iterable[Objective] = ()) -> None:
        self._by_name: dict[str, Objective] = {o.name: o for o in objectives}

    def priority(self, name: str | None) -> int:
        """The priority of objective ``name``; 0 when it is absent or unknown."""
        if not name:
            return 0
        objective = self._by_name.get(name)
        return objective.priority if objective is not None else 0

    def put(self, objective: Objective) -> None:
        self._by_name[objective.name] = objective

    def remove(self, name: str) -> None:
        self._by_name.pop(name, None)

    def replace(self, objectives: Iterable[Objective]) -> None:
        self._by_name = {o.name: o for o in objectives}

    def names(self) -> list[str]:
        return sorted(self._by_name)

    @classmethod
    def from_file(cls, path: str | Path) -> ObjectiveStore:
        """Load every InferenceObjective of a YAML file; ConfigError lists each mistake."""
        source = str(path)
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except OSError as exc:
            raise ConfigError([Problem(source, "", f"cannot read: {exc.strerror}")]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(source, "", f"not valid YAML: {exc}")]) from exc
        problems: list[Problem] = []
        objectives: list[Objective] = []
        for i, doc in enumerate(d for d in docs if d is not None):
            objective = parse_objective(doc, source, f"documents[{i}]", problems)
            if objective is not None:
                objectives.append(objective)
        if problems:
            raise ConfigError(problems)
        return cls(objectives)


def parse_objective(doc: Any, source: str, path: str, problems: list[Problem]) -> Objective | None:
    """One InferenceObjective document; appends a Problem per wrong field."""
    start = len(problems)
    if not isinstance(doc, Mapping):
        problems.append(Problem(source, path, f"expected an {KIND} mapping, got {describe(doc)}"))
        return None
    if doc.get("kind") != KIND:
        problems.append(
            Problem(source, f"{path}.kind", f"expected '{KIND}', got {describe(doc.get('kind'))}")
        )
    if doc.get("apiVersion") not in API_VERSIONS:
        problems.append(
            Problem(
                source,
                f"{path}.apiVersion",
                f"expected {' or '.join(repr(v) for v in API_VERSIONS)}, got {describe(doc.get('apiVersion'))}",
            )
        )
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        problems.append(
            Problem(
                source,
                f"{path}.metadata.name",
                f"expected a non-empty string, got {describe(name)}",
            )
        )
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        problems.append(
            Problem(source, f"{path}.spec", f"expected a mapping, got {describe(spec)}")
        )
        return None
    priority = spec.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        problems.append(
            Problem(
                source, f"{path}.spec.priority", f"expected an integer, got {describe(priority)}"
            )
        )
    pool_ref = spec.get("poolRef")
    pool = pool_ref.get("name") if isinstance(pool_ref, Mapping) else None
    if not isinstance(pool, str) or not pool:
        problems.append(
            Problem(
                source,
                f"{path}.spec.poolRef.name",
                f"expected the InferencePool's name, got {describe(pool)}",
            )
        )
    if len(problems) > start:
        return None
    assert isinstance(name, str) and isinstance(pool, str) and isinstance(priority, int)
    return Objective(name, priority, pool)
