"""Fixtures shared by every test: real processes on loopback, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.procs import Proc

#: fixtures shared by test files in several folders (model_repo, hf_env: the loopback Hub);
#: support.leaks fails the session when a kvgate process outlives the test that started it
pytest_plugins = ["support.hf_hub", "support.leaks"]

if TYPE_CHECKING:
    from support.vllm import VllmPair


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


@pytest.fixture(scope="session")
def vllm_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmPair]:
    """Two real vLLM replicas started once per session (support/vllm.py); skips without `make vllm`."""
    from support.vllm import start_vllm_pair

    pair = start_vllm_pair(tmp_path_factory.mktemp("vllm-pair"))
    yield pair
    pair.stop()
