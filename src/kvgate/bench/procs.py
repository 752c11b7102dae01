"""The processes a benchmark starts: log files, readiness with deadlines, clean stops."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvgate.errors import KvgateError


class BenchError(KvgateError):
    """A benchmark could not run (a process did not start, a policy is unknown)."""


class Proc:
    """A subprocess in its own session, its output in ``log_path``; ``stop`` ends the group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        unset_env: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if k not in unset_env}
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        self._log.close()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(procs: Sequence[tuple[Proc, str]], timeout_s: float) -> None:
    """Poll every ``(proc, url)`` until it answers 2xx; raise with the log tail otherwise."""
    pending = list(procs)
    deadline = time.monotonic() + timeout_s
    while pending:
        for item in list(pending):
            proc, url = item
            if not proc.alive():
                raise BenchError(
                    f"{proc.name} exited with code {proc.popen.returncode} before it was "
                    f"ready ({proc.log_path}):\n{proc.log_tail()}"
                )
            if http_ok(url):
                pending.remove(item)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p, _ in pending)
            raise BenchError(
                f"not ready after {timeout_s:.0f}s: {names} ({pending[0][0].log_path})"
            )
        time.sleep(0.1)


def wait_in_rotation(metrics_url: str, count: int, timeout_s: float) -> None:
    """Poll the router's ``kvgate_endpoint_in_rotation`` gauges (at ``metrics_url``) until ``count`` are 1.

    Gives up silently at the deadline (or if the gateway does not export the gauge): /ready
    already holds, the run then merely starts with fewer endpoints.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2.0) as resp:
                text = resp.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            text = ""
        lines = [ln for ln in text.splitlines() if ln.startswith("kvgate_endpoint_in_rotation{")]
        if text and not lines:
            return
        if sum(1 for ln in lines if ln.rsplit(" ", 1)[-1] in ("1", "1.0")) >= count:
            return
        time.sleep(0.1)


def kvgate_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvgate", *args]


def last_line(proc: Proc) -> str:
    lines = [ln for ln in proc.log_tail(4000).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.popen.returncode}"
