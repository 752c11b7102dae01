"""Fixtures shared by every test: real processes on loopback, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from support.procs import Proc


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a process with its log under tmp_path; every one is stopped at teardown."""
    procs: list[Proc] = []

    def _spawn(args: Sequence[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp_path / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in reversed(procs):
        proc.stop()
