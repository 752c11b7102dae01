"""`make vllm`: refuses clearly where the CPU build cannot run, and is instant when done."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from support.vllm import engine_skip_reason

REPO = Path(__file__).resolve().parents[2]


def _make(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_not_x86_64_linux_gets_a_clear_message(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    uname = fake / "uname"
    uname.write_text('#!/bin/sh\ncase "$1" in -s) echo Darwin;; -m) echo arm64;; esac\n')
    uname.chmod(uname.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    proc = _make(
        "vllm",
        f"KVGATE_VLLM_VENV={venv}",
        env={"PATH": f"{fake}:{os.environ['PATH']}", "KVGATE_VLLM_VENV": str(venv)},
    )
    assert proc.returncode != 0
    assert "needs x86-64 Linux" in proc.stderr and "Darwin/arm64" in proc.stderr
    assert "ENGINE=sim" in proc.stderr
    assert not venv.exists(), "nothing is installed on a machine it cannot serve"


@pytest.mark.vllm
def test_make_vllm_is_instant_when_already_done() -> None:
    reason = engine_skip_reason()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    proc = _make("-s", "vllm", env={})
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 5
    assert "creating" not in proc.stdout
