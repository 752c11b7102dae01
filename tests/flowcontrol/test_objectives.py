"""InferenceObjective files -> priorities."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.errors import ConfigError
from kvgate.flowcontrol.objectives import ObjectiveStore

GOOD = """apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 10, poolRef: {name: pool}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {group: inference.networking.k8s.io, name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: plain}
spec: {poolRef: {name: pool}}
"""


def test_loads_every_document(tmp_path: Path) -> None:
    path = tmp_path / "objectives.yaml"
    path.write_text(GOOD)
    store = ObjectiveStore.from_file(path)
    assert store.names() == ["batch", "critical", "plain"]
    assert [store.priority(n) for n in ("critical", "batch", "plain", "unknown", None)] == [
        10,
        -1,
        0,
        0,
        0,
    ]


def test_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: v1\nkind: InferenceObjective\nmetadata: {name: x}\n"
        "spec: {priority: high, poolRef: {}}\n"
    )
    with pytest.raises(ConfigError) as info:
        ObjectiveStore.from_file(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}: documents[0].apiVersion: expected 'inference.networking.x-k8s.io/v1alpha2' or 'llm-d.ai/v1alpha2', got string 'v1'",
        f"{path}: documents[0].spec.priority: expected an integer, got string 'high'",
        f"{path}: documents[0].spec.poolRef.name: expected the InferencePool's name, got null",
    ]
