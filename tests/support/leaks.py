"""A pytest plugin that fails the session when a kvgate process a test started outlives it.

Every test runs with ``KVGATE_TEST_NODE`` set to its node id in ``os.environ``, so every
process it starts (and their children, which inherit the environment: a benchmark script's
``kvgate sim`` replicas included) carries the name of the test that started it. When the
session ends, every process of this user still alive whose environment carries this session's
tag and whose command line runs kvgate is a leak: it is named with its test, stopped, and the
session fails. Processes of other pytest sessions carry another tag and are never touched.

Linux only (it reads ``/proc``); elsewhere it checks nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_VAR = "KVGATE_TEST_SESSION"
NODE_VAR = "KVGATE_TEST_NODE"
#: A process stopped at the very end of a test may take a moment to exit.
GRACE_S = 3.0


def pytest_configure(config: pytest.Config) -> None:
    # Always a new tag: a pytest run by a test must not claim its parent session's processes.
    os.environ[SESSION_VAR] = uuid.uuid4().hex


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    os.environ[NODE_VAR] = item.nodeid
    try:
        yield
    finally:
        os.environ.pop(NODE_VAR, None)


def _environ(pid: int) -> dict[str, str]:
    raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def is_kvgate(arg: str) -> bool:
    """``python -m kvgate ...``, ``.venv/bin/kvgate ...`` or ``python -m kvgate.x ...``."""
    return os.path.basename(arg) == "kvgate" or arg.startswith("kvgate.")


def leaked_processes(session_tag: str) -> dict[int, tuple[str, str]]:
    """pid -> (test node id, command line) of live kvgate processes tagged ``session_tag``."""
    found: dict[int, tuple[str, str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie has exited; only its parent's wait is missing
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = _environ(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile, or another user's
        if env.get(SESSION_VAR) != session_tag:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if any(is_kvgate(a) for a in args):
            found[int(entry.name)] = (env.get(NODE_VAR, "(outside any test)"), " ".join(args))
    return found


def pytest_sessionfinish(session: pytest.Session) -> None:
    tag = os.environ.get(SESSION_VAR)
    if tag is None:
        return
    deadline = time.monotonic() + GRACE_S
    leaks = leaked_processes(tag)
    while leaks and time.monotonic() < deadline:
        time.sleep(0.1)
        leaks = leaked_processes(tag)
    if not leaks:
        return
    lines = [f"{len(leaks)} kvgate process(es) outlived the test that started them:"]
    for pid, (node, cmdline) in sorted(leaks.items()):
        lines.append(f"  pid {pid} from {node}: {cmdline[:200]}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "leaked processes", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
