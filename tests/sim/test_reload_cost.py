"""The H100 profiles' CPU-tier reload cost comes from the calibration's ``pcie_copy`` section
(``fixed_ms + block_bytes / GBps`` of pinned host-to-device copies), as
benchmarks/fit_h100_profiles.py derives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgate.sim.profiles import load_profile

CALIBRATION = Path(__file__).resolve().parents[2] / ".." / "shared" / "calibration" / "h100.json"


@pytest.mark.parametrize("name", ["qwen3-0.6b-h100", "llama-3.1-8b-h100"])
def test_reload_cost_per_block_is_the_calibrated_copy(name: str) -> None:
    assert CALIBRATION.exists(), f"{CALIBRATION}: the H100 calibration is needed"
    pcie = json.loads(CALIBRATION.read_text())["pcie_copy"]
    fit = pcie["fit_h2d_pinned"]
    profile = load_profile(name)
    block_bytes = profile.block_size * profile.kv_bytes_per_token
    expected_ms = fit["fixed_ms"] + block_bytes / (fit["GBps"] * 1e9) * 1e3
    assert profile.latency.offload_load_ms_per_block == pytest.approx(expected_ms, abs=1e-6)
    # one 2 MiB copy was measured directly: a block of about that size costs about that
    two_mib = next(c for c in pcie["single_copies"] if c["bytes"] == 2 * 1024 * 1024)
    per_mib = profile.latency.offload_load_ms_per_block / (block_bytes / 2**20)
    assert per_mib * 2 == pytest.approx(two_mib["h2d_pinned_ms"], rel=0.25)
    # reloading a block stays cheaper than recomputing its tokens
    assert profile.latency.offload_load_ms_per_block < 16 * profile.latency.prefill_ms_per_token
