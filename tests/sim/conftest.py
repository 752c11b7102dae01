"""Module-scoped process spawning, so one simulator serves every test of a module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from support.procs import Proc


@pytest.fixture(scope="module")
def module_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proc]]:
    tmp = tmp_path_factory.mktemp("sim")
    procs: list[Proc] = []

    def _spawn(args: Sequence[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in reversed(procs):
        proc.stop()
