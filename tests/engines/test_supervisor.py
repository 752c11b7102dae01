"""The supervisor with stand-in replica processes: readiness, failures, restarts, clean stop.

The supervisor runs any command; these tests give it a small HTTP server (stdlib only) so
they run in a second. Real vLLM replicas go through the same code in test_vllm_replicas.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kvgate.engines import LaunchPlan, ModelSource, ReplicaEvent, ReplicaSpec, Supervisor
from kvgate.engines.hosts import free_port
from kvgate.errors import EngineError

STAND_IN = r"""
import http.server, os, signal, subprocess, sys, time
port, delay, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if mode == "crash":
    print("boom: cannot load model", flush=True); sys.exit(3)
if mode == "child":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(sys.argv[4], "w").write(str(child.pid))
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(delay)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if mode != "never" else 503); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _plan(tmp_path: Path, modes: list[str], delay_s: float = 0.2) -> LaunchPlan:
    replicas = []
    for i, mode in enumerate(modes):
        port = free_port()
        argv = [sys.executable, "-c", STAND_IN, str(port), str(delay_s), mode]
        if mode == "child":
            argv.append(str(tmp_path / f"child-{i}.pid"))
        replicas.append(
            ReplicaSpec(
                index=i,
                name=f"replica-{i}",
                engine="sim",
                argv=tuple(argv),
                env={"KVGATE_TEST_REPLICA": str(i)},
                unset_env=(),
                host="127.0.0.1",
                port=port,
                served_model_name="m",
                log_path=tmp_path / "logs" / f"replica-{i}.log",
                kv_events_endpoint=None,
                kv_events_connect=None,
                kv_events_topic=None,
                kv_events_replay_endpoint=None,
                block_size=32,
                prefix_caching_hash_algo="sha256",
            )
        )
    model = ModelSource(uri="m", name="m", path=None, tokenizer=None)
    return LaunchPlan("sim", model, tmp_path, tuple(replicas), ready_timeout_s=20.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


async def test_ready_then_stop_ends_every_process_of_every_group(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["child", "plain"])
    async with Supervisor(plan, progress=False) as sup:
        await sup.wait_ready()
        assert all(rp.state == "ready" and rp.ready_after_s is not None for rp in sup.replicas)
        child_pid = int((tmp_path / "child-0.pid").read_text())
        pids = [rp.pid for rp in sup.replicas]
        assert _alive(child_pid)
    assert not _alive(child_pid), "a replica's child outlived stop()"
    assert all(pid is not None and not _alive(pid) for pid in pids)
    assert "starting replica-0" in plan.replicas[0].log_path.read_text()


async def test_a_replica_that_exits_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["plain", "crash"], delay_s=5.0)
    sup = Supervisor(plan, progress=False)
    sup.start()
    try:
        with pytest.raises(EngineError) as err:
            await sup.wait_ready()
        assert "replica-1 exited with code 3" in str(err.value)
        assert "boom: cannot load model" in str(err.value)
    finally:
        await sup.stop()


async def test_readiness_has_a_deadline(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["never"], delay_s=0.0)
    async with Supervisor(plan, progress=False) as sup:
        started = time.monotonic()
        with pytest.raises(EngineError, match="replica-0 not ready after 1 s"):
            await sup.wait_ready(timeout_s=1.0)
        assert time.monotonic() - started < 5


async def test_sigterm_ignored_means_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["stubborn"])
    sup = Supervisor(plan, progress=False, grace_s=0.5)
    sup.start()
    await sup.wait_ready()
    pid = sup.replicas[0].pid
    assert pid is not None
    await sup.stop()
    assert not _alive(pid)
    assert sup.replicas[0].returncode == -signal.SIGKILL


async def test_watch_restarts_a_replica_that_dies_and_reports_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["plain"], delay_s=0.0)
    events: list[ReplicaEvent] = []
    async with Supervisor(plan, progress=False) as sup:
        await sup.wait_ready()
        first_pid = sup.replicas[0].pid
        assert first_pid is not None
        watcher = asyncio.create_task(sup.watch(events.append, backoff_s=(0.1,)))
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while not any(e.kind == "ready" for e in events):
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)
        watcher.cancel()
        kinds = [e.kind for e in events]
        assert kinds[:3] == ["exited", "restarting", "ready"]
        assert sup.replicas[0].pid != first_pid and sup.replicas[0].restarts == 1
        assert sup.replicas[0].alive()


async def test_a_port_already_in_use_is_refused_not_mistaken_for_the_replica(
    tmp_path: Path,
) -> None:
    import socket

    plan = _plan(tmp_path, ["plain"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", plan.replicas[0].port))
        holder.listen()
        sup = Supervisor(plan, progress=False)
        with pytest.raises(EngineError, match="already in use"):
            sup.start()
        await sup.stop()


def test_replicas_do_not_outlive_a_supervisor_that_is_killed(tmp_path: Path) -> None:
    import json
    import subprocess

    plan = _plan(tmp_path, ["plain"], delay_s=0.0)
    spec = plan.replicas[0]
    driver = """
import json, sys, time
from pathlib import Path
from kvgate.engines import LaunchPlan, ModelSource, ReplicaSpec, Supervisor
spec = ReplicaSpec(**json.loads(sys.argv[1]) | {"log_path": Path(sys.argv[2])})
plan = LaunchPlan("sim", ModelSource("m", "m", None, None), Path(sys.argv[3]), (spec,), 20.0)
sup = Supervisor(plan, progress=False)
sup.start()
sup.wait_ready_blocking()
print(sup.replicas[0].pid, flush=True)
time.sleep(300)
"""
    fields = {
        f: getattr(spec, f)
        for f in ReplicaSpec.__dataclass_fields__
        if f not in ("log_path", "cpus", "gpus")
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, json.dumps(fields), str(spec.log_path), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        replica_pid = int(proc.stdout.readline())
        assert _alive(replica_pid)
        proc.kill()  # SIGKILL: no finally block, no stop()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while _alive(replica_pid):
            assert time.monotonic() < deadline, "the replica outlived its killed supervisor"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
