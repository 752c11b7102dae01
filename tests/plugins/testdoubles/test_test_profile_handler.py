"""test-profile-handler: runs no profile and fails every cycle, as llm-d's double does;
llm-d's configloader test file loads, and the request it schedules is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.config.build import trial_context
from kvgate.config.strict import strict_differences
from kvgate.errors import SchedulingFailedError
from plugins.kit import endpoint, request

CONFIG = (
    Path(__file__).resolve().parents[2]
    / "data"
    / "llm-d-configs"
    / "llm-d-router__test_testdata_configloader_1_test.yaml"
)


def test_configloader_file_loads_and_every_cycle_fails() -> None:
    config = load_picker_config(CONFIG, env={})
    assert "test-feature-gate" in config.feature_gates  # accepted, acts on nothing
    sched = build_scheduler(config, trial_context())
    assert sched.handler.type_name == "test-profile-handler"
    with pytest.raises(SchedulingFailedError, match="runs no profile"):
        sched.schedule(request(), [endpoint("a")])
    notes = strict_differences(config)  # --strict names every double and the gate
    assert sum("a test double" in n for n in notes) == 6
    assert any(n.startswith("featureGates: test-feature-gate") for n in notes)
