"""Start real processes on loopback and wait for them with a deadline (never a bare sleep)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from kvgate.engines import hosts


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (kvgate's own choice: below the
    ephemeral range, so no outgoing connection takes it before the server binds)."""
    return hosts.free_port("127.0.0.1")


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> None:
    """Poll ``check`` until it returns True or raise TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # a check that raises is simply not ready yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s}s: {what}")
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_http(self, url: str, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(
                    f"process exited ({self.popen.returncode}):\n{self.log()[-4000:]}"
                )
            return http_ok(url)

        deadline = time.monotonic() + timeout_s
        while True:
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s}s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def kvgate_cmd(*args: str) -> list[str]:
    """Command line running the installed kvgate with this interpreter."""
    return [sys.executable, "-m", "kvgate", *args]
