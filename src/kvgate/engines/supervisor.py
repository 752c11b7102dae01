"""Start the replicas of a :class:`LaunchPlan`, wait until they are ready, stop them cleanly.

Each replica runs in its own process group (its own session), with stdout and stderr in
``<run_dir>/logs/replica-<i>.log``. Stopping sends SIGTERM to every group at once, waits a
grace period, then SIGKILLs what is left, so no engine child (vLLM's EngineCore, OpenMP
threads, ZMQ sockets) outlives kvgate.

Processes are plain :class:`subprocess.Popen` objects, so a supervisor is not tied to one
event loop: ``kvgate up`` drives it from its loop, tests from a session fixture with
:meth:`Supervisor.wait_ready_blocking` and :meth:`Supervisor.stop_blocking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from kvgate.engines.base import LaunchPlan, ReplicaSpec
from kvgate.engines.hosts import port_bindable
from kvgate.errors import EngineError

if TYPE_CHECKING:
    from rich.table import Table

ReplicaState = Literal["stopped", "starting", "ready", "exited"]


@dataclass(slots=True)
class ReplicaProcess:
    """One running (or finished) replica process."""

    spec: ReplicaSpec
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    state: ReplicaState = "stopped"
    started_at: float = 0.0
    ready_after_s: float | None = None
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """What :meth:`Supervisor.watch` reports: a replica exited, was restarted, became ready."""

    replica: str
    kind: Literal["exited", "restarting", "ready", "failed"]
    detail: str


def log_tail(path: Path, max_chars: int = 3000) -> str:
    """The end of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    for line in reversed(log_tail(path, 4000).splitlines()):
        line = line.strip()
        if line:
            return line
    return ""


def _load_prctl() -> Callable[[int, int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: set[int] | None, parent_pid: int) -> Callable[[], None]:
    """Runs in the child between fork and exec (keep it to plain system calls).

    The replica gets SIGTERM if kvgate dies without stopping it (crash, SIGKILL), so no
    engine outlives its supervisor; without ``taskset`` the child is pinned here.
    """

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """Runs the replicas of one plan. Use as ``async with Supervisor(plan) as sup:``."""

    def __init__(self, plan: LaunchPlan, *, grace_s: float = 10.0, progress: bool = True) -> None:
        self.plan = plan
        self.grace_s = grace_s
        self.progress = progress
        self.replicas = [ReplicaProcess(spec) for spec in plan.replicas]
        self._stopping = False

    # --- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn every replica (returns at once; see :meth:`wait_ready`).

        Call it from a thread that outlives the replicas (the main or event-loop thread):
        a replica is told to stop when the thread that started it ends.
        """
        self._stopping = False
        (self.plan.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for rp in self.replicas:
            self._spawn(rp)

    def _spawn(self, rp: ReplicaProcess) -> None:
        spec = rp.spec
        host = spec.host if spec.host not in ("*", "") else "0.0.0.0"
        if not port_bindable(host, spec.port, reuse_address=True):
            # Otherwise whatever holds the port would answer /health and pass for the replica.
            raise EngineError(
                f"{spec.name}: port {spec.port} on {spec.host} is already in use; "
                "stop what holds it or choose another base port"
            )
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in spec.unset_env}
        env.update(spec.env)
        for key in ("VLLM_CACHE_ROOT",):
            if key in env:
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        if rp.log_file is not None:
            rp.log_file.close()
        rp.log_file = open(spec.log_path, "ab")  # noqa: SIM115 - closed in stop()/_spawn()
        header = f"--- kvgate: starting {spec.name}: {' '.join(spec.argv)}\n"
        rp.log_file.write(header.encode())
        rp.log_file.flush()
        pin = set(spec.cpus) if spec.cpus and not spec.argv[0].endswith("taskset") else None
        preexec = _child_setup(pin, os.getpid())
        try:
            rp.popen = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=rp.log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            raise EngineError(f"{spec.name}: cannot start {spec.argv[0]}: {exc}") from exc
        rp.state = "starting"
        rp.started_at = time.monotonic()
        rp.ready_after_s = None

    # --- readiness --------------------------------------------------------------------------

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll every replica's /health until all answer 200 or the deadline passes.

        Shows progress (a live table on a terminal, one line per change otherwise). Raises
        EngineError naming the replica, with the end of its log, when one exits or is late.
        """
        timeout_s = self.plan.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        display = _Progress(self) if self.progress else None
        try:
            while True:
                pending = [rp for rp in self.replicas if rp.state != "ready"]
                if not pending:
                    return
                for rp in pending:
                    if not rp.alive():
                        rp.state = "exited"
                        raise EngineError(
                            f"{rp.spec.name} exited with code {rp.returncode} while starting "
                            f"(log: {rp.spec.log_path}):\n{log_tail(rp.spec.log_path, 2500)}"
                        )
                results = await asyncio.gather(
                    *(asyncio.to_thread(_http_ok, rp.spec.ready_url) for rp in pending)
                )
                for rp, ok in zip(pending, results, strict=True):
                    if ok:
                        rp.state = "ready"
                        rp.ready_after_s = time.monotonic() - rp.started_at
                if display:
                    display.update()
                if all(rp.state == "ready" for rp in self.replicas):
                    return
                if time.monotonic() > deadline:
                    late = [rp for rp in self.replicas if rp.state != "ready"]
                    rp = late[0]
                    raise EngineError(
                        f"{', '.join(r.spec.name for r in late)} not ready after {timeout_s:.0f} s "
                        f"(log: {rp.spec.log_path}):\n{log_tail(rp.spec.log_path, 2500)}"
                    )
                await asyncio.sleep(0.25)
        finally:
            if display:
                display.close()

    def wait_ready_blocking(self, timeout_s: float | None = None) -> None:
        """:meth:`wait_ready` for code without an event loop."""
        asyncio.run(self.wait_ready(timeout_s))

    # --- failures and restarts -----------------------------------------------------------------

    def exited(self) -> list[ReplicaProcess]:
        """Replicas whose process has ended (and was not stopped by :meth:`stop`)."""
        return [rp for rp in self.replicas if rp.popen is not None and not rp.alive()]

    def restart(self, index: int) -> None:
        """Start replica ``index`` again with the same argv, ports and log (appended)."""
        rp = self.replicas[index]
        _stop_all([rp], self.grace_s)
        rp.restarts += 1
        self._spawn(rp)

    async def watch(
        self,
        on_event: Callable[[ReplicaEvent], None] | None = None,
        *,
        max_restarts: int = 5,
        backoff_s: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 30.0),
    ) -> None:
        """Until :meth:`stop`: restart replicas that exit, with backoff, and report each step."""
        report = on_event or (lambda event: None)
        while not self._stopping:
            for rp in self.replicas:
                if self._stopping:
                    return
                if rp.state == "starting" and rp.alive() and _http_ok(rp.spec.ready_url, 0.5):
                    rp.state = "ready"
                    rp.ready_after_s = time.monotonic() - rp.started_at
                    report(ReplicaEvent(rp.spec.name, "ready", f"after {rp.ready_after_s:.1f} s"))
                if rp.popen is None or rp.alive():
                    continue
                code = rp.returncode
                rp.state = "exited"
                report(ReplicaEvent(rp.spec.name, "exited", f"exit code {code}"))
                if rp.restarts >= max_restarts:
                    report(
                        ReplicaEvent(
                            rp.spec.name, "failed", f"gave up after {rp.restarts} restarts"
                        )
                    )
                    rp.popen = None
                    continue
                delay = backoff_s[min(rp.restarts, len(backoff_s) - 1)]
                report(ReplicaEvent(rp.spec.name, "restarting", f"in {delay:.0f} s"))
                await asyncio.sleep(delay)
                if not self._stopping:
                    self.restart(rp.spec.index)
            await asyncio.sleep(0.5)

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM every replica's process group, SIGKILL after the grace period."""
        self._stopping = True
        await asyncio.to_thread(_stop_all, self.replicas, self.grace_s)

    def stop_blocking(self) -> None:
        self._stopping = True
        _stop_all(self.replicas, self.grace_s)

    async def __aenter__(self) -> Supervisor:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _stop_all(replicas: Sequence[ReplicaProcess], grace_s: float) -> None:
    live = [rp for rp in replicas if rp.alive()]
    for rp in live:
        assert rp.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rp.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for rp in live:
        assert rp.popen is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            rp.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for rp in replicas:
        if rp.popen is None:
            continue
        # Kill the whole group even when the leader already exited: children may linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rp.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            rp.popen.wait(timeout=5)
        _wait_group_gone(rp.popen.pid, 5.0)
        rp.state = "stopped"
        if rp.log_file is not None:
            rp.log_file.close()
            rp.log_file = None


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait until no process of group ``pgid`` is left (so its ports are free again)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


class _Progress:
    """Start-up progress: a live rich table on a terminal, plain lines otherwise."""

    def __init__(self, sup: Supervisor) -> None:
        from rich.console import Console

        self.sup = sup
        self.console = Console(stderr=True)
        self.live = None
        self.reported: dict[str, str] = {}
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4)
            self.live.start()
        else:
            n = len(sup.replicas)
            self.console.print(
                f"starting {n} {sup.plan.engine} replica{'s' if n != 1 else ''} "
                f"of {sup.plan.model.name} (logs in {sup.plan.run_dir / 'logs'})",
                highlight=False,
            )

    def _table(self) -> Table:
        from rich.table import Table

        table = Table(title=f"{self.sup.plan.engine} replicas of {self.sup.plan.model.name}")
        for col in ("replica", "url", "pinned", "state", "last log line"):
            table.add_column(col, overflow="fold" if col == "last log line" else "ellipsis")
        now = time.monotonic()
        for rp in self.sup.replicas:
            s = rp.spec
            pinned = (
                f"cpu {','.join(map(str, s.cpus))}"
                if s.cpus
                else f"gpu {','.join(s.gpus)}"
                if s.gpus
                else "-"
            )
            if rp.state == "ready":
                state = f"[green]ready in {rp.ready_after_s or 0:.1f} s"
            elif rp.state == "exited":
                state = f"[red]exited ({rp.returncode})"
            else:
                state = f"starting {now - rp.started_at:.0f} s"
            table.add_row(s.name, s.base_url, pinned, state, _last_line(s.log_path)[-80:])
        return table

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            return
        for rp in self.sup.replicas:
            if rp.state == "ready" and self.reported.get(rp.spec.name) != "ready":
                self.reported[rp.spec.name] = "ready"
                self.console.print(
                    f"  {rp.spec.name} ready at {rp.spec.base_url} after {rp.ready_after_s or 0:.1f} s",
                    highlight=False,
                )

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
