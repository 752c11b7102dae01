"""support/leaks.py: a tagged kvgate process still alive is found and named with its test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from support.leaks import NODE_VAR, SESSION_VAR, leaked_processes
from support.procs import wait_until


def test_a_tagged_kvgate_process_is_found_until_it_exits() -> None:
    tag = uuid.uuid4().hex
    env = {**os.environ, SESSION_VAR: tag, NODE_VAR: "tests/x.py::test_y"}
    # argv names kvgate as `python -m kvgate ...` would; the process only sleeps
    code = "import sys, time; sys.stdin.read()"
    leaked = subprocess.Popen(
        [sys.executable, "-c", code, "kvgate", "sim"], env=env, stdin=subprocess.PIPE
    )
    other = subprocess.Popen([sys.executable, "-c", code, "not-it"], env=env, stdin=subprocess.PIPE)
    try:
        wait_until(lambda: leaked.pid in leaked_processes(tag), timeout_s=5, what="the leak")
        found = leaked_processes(tag)
        assert found[leaked.pid][0] == "tests/x.py::test_y"
        assert "kvgate sim" in found[leaked.pid][1]
        assert other.pid not in found  # not a kvgate process
        assert leaked.pid not in leaked_processes(uuid.uuid4().hex)  # another session's
    finally:
        for p in (leaked, other):
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=5)
    assert leaked.pid not in leaked_processes(tag)
