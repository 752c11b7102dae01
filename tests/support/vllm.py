"""Real vLLM replicas for tests: one pair per test session, shared by every vLLM test.

The ``vllm_pair`` session fixture (tests/conftest.py) calls :func:`start_vllm_pair` once:
two real vLLM 0.32 CPU replicas of SmolLM2-135M-Instruct, served as ``smollm2``, each pinned
to its own core, with a small KV cache (80 MB = 3,456 tokens, so eviction is easy to reach),
block size 32, the default ``sha256`` block hash, and KV events. A background SUB socket
records every KV-event message from both replicas from the start (:class:`EventRecorder`);
tests may also connect their own subscribers to ``replica.kv_events_connect``.

Replicas are shared, so tests must not depend on what is (not) cached from other tests:
build prompts with :func:`unique_words` (a seeded, per-tag vocabulary) and mark positions in
the event stream with :meth:`EventRecorder.mark` before sending.

Tests using it are marked ``@pytest.mark.vllm``; they skip only when the engine venv from
``make vllm`` is missing (``make test`` always builds it). A replica that fails to start
fails the tests, with the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvgate.engines import EngineConfig, LaunchPlan, ReplicaSpec, Supervisor, plan_launch

MODEL_NAME = "smollm2"
BLOCK_SIZE = 32
KV_CACHE_BYTES = 80_000_000  # 108 blocks of 32 tokens for SmolLM2 (23,040 B/token in bf16)
MAX_MODEL_LEN = 2048


def engine_skip_reason() -> str | None:
    """Why real-vLLM tests cannot run here (None when they can)."""
    from kvgate.engines.vllm import engine_venv, venv_ready

    venv = engine_venv()
    if not venv_ready(venv):
        return f"real vLLM engine venv missing ({venv}): run `make vllm` (make test does)"
    return None


@dataclass(frozen=True, slots=True)
class KvMessage:
    """One KV-event ZMQ message as received: ``[topic, seq, payload]``."""

    replica: int
    frames: tuple[bytes, ...]
    received_at: float

    @property
    def topic(self) -> str:
        return self.frames[0].decode()

    @property
    def seq(self) -> int:
        return int.from_bytes(self.frames[1], "big", signed=True)

    @property
    def payload(self) -> bytes:
        return self.frames[2]

    def decoded(self) -> Any:
        """The raw msgpack structure (lists, dicts, ints), for wire-format checks."""
        import msgspec

        return msgspec.msgpack.decode(self.payload)


class EventRecorder:
    """Records KV-event messages from several PUB endpoints on a background thread."""

    def __init__(self, endpoints: list[str]) -> None:
        import zmq

        self._ctx = zmq.Context.instance()
        self._socks = []
        for endpoint in endpoints:
            sock = self._ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._socks.append(sock)
        self._messages: list[KvMessage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-event-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        poller = zmq.Poller()
        for sock in self._socks:
            poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                frames = sock.recv_multipart()
                msg = KvMessage(self._socks.index(sock), tuple(frames), time.monotonic())
                with self._lock:
                    self._messages.append(msg)

    def mark(self) -> int:
        """A position in the stream; pass it to :meth:`since` / :meth:`wait`."""
        with self._lock:
            return len(self._messages)

    def since(self, mark: int = 0, replica: int | None = None) -> list[KvMessage]:
        with self._lock:
            msgs = self._messages[mark:]
        return [m for m in msgs if replica is None or m.replica == replica]

    def wait(
        self,
        done: Callable[[list[KvMessage]], bool],
        *,
        mark: int = 0,
        replica: int | None = None,
        timeout_s: float = 15.0,
    ) -> list[KvMessage]:
        """Poll until ``done(messages since mark)``; TimeoutError with what arrived otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            msgs = self.since(mark, replica)
            if done(msgs):
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"KV events not as expected after {timeout_s}s: {len(msgs)} messages"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in self._socks:
            sock.close(0)


@dataclass
class VllmPair:
    """Two running real vLLM replicas and their KV-event recorder."""

    plan: LaunchPlan
    supervisor: Supervisor
    events: EventRecorder
    startup_s: float
    model: str = MODEL_NAME
    _stopped: bool = field(default=False, repr=False)

    @property
    def replicas(self) -> tuple[ReplicaSpec, ...]:
        return self.plan.replicas

    @property
    def urls(self) -> list[str]:
        return self.plan.endpoints

    @property
    def model_path(self) -> Path:
        assert self.plan.model.path is not None
        return self.plan.model.path

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.events.close()
            self.supervisor.stop_blocking()


def vllm_config(run_dir: Path, **overrides: Any) -> EngineConfig:
    """The engine config of the shared pair (tests starting their own replicas reuse it)."""
    from kvgate.engines.model import prepare_model, resolve_model

    prepare_model()  # no-op when `make model` already ran
    model = resolve_model("smollm2", name=MODEL_NAME)
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": model,
        "run_dir": run_dir,
        "block_size": BLOCK_SIZE,
        "kv_cache_bytes": KV_CACHE_BYTES,
        "max_model_len": MAX_MODEL_LEN,
        "device": "cpu",
    }
    base.update(overrides)
    return EngineConfig(**base)


#: Start-up deadline: ~25 s on an idle 2-core machine, 4+ minutes on one shared with busy work.
STARTUP_TIMEOUT_S = 600.0


@contextlib.contextmanager
def pytest_timeout_paused() -> Iterator[None]:
    """Pause pytest-timeout's per-test alarm while replicas start (restored afterwards).

    The session's replicas start inside whichever vLLM test runs first; that test's own
    timeout should not include a start-up that other tests share. The start-up has its own
    deadline (STARTUP_TIMEOUT_S). Only the signal method uses an interval timer; with any
    other this is a no-op.
    """
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if remaining:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining)


def start_vllm_pair(run_dir: Path, num_replicas: int = 2) -> VllmPair:
    """Start the shared replicas (skips the calling test when the engine venv is missing)."""
    reason = engine_skip_reason()
    if reason:
        pytest.skip(reason)
    plan = plan_launch(vllm_config(run_dir), num_replicas)
    sup = Supervisor(plan, progress=False)
    started = time.monotonic()
    sup.start()
    recorder = EventRecorder([r.kv_events_connect for r in plan.replicas if r.kv_events_connect])
    try:
        with pytest_timeout_paused():
            sup.wait_ready_blocking(STARTUP_TIMEOUT_S)
    except BaseException:
        recorder.close()
        sup.stop_blocking()
        raise
    return VllmPair(plan, sup, recorder, time.monotonic() - started)


# --- small HTTP helpers (raw JSON, so tests see exactly what the server sent) ------------------


def post_json(url: str, body: dict[str, Any], timeout_s: float = 120.0) -> tuple[int, Any]:
    """POST JSON; returns (status, decoded body) for 2xx and error statuses alike."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def stream_sse(url: str, body: dict[str, Any], timeout_s: float = 120.0) -> list[Any]:
    """POST a streaming request; returns the decoded ``data:`` chunks, ``"[DONE]"`` kept as is."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    chunks: list[Any] = []
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            chunks.append(data if data == "[DONE]" else json.loads(data))
    return chunks


def get_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return str(resp.read().decode())


# fmt: off
_VOCAB = (
    "apple", "river", "stone", "cloud", "green", "quiet", "market", "window", "silver",
    "garden", "orange", "paper", "mountain", "little", "yellow", "engine", "forest", "candle",
    "bridge", "winter", "summer", "violet", "copper", "harbor", "planet", "signal", "meadow",
    "thunder", "velvet", "marble", "lantern", "cotton", "pepper", "saddle",
)
# fmt: on


def unique_words(tag: str, n: int) -> str:
    """``n`` plain words, deterministic for ``tag`` and different between tags."""
    rng = random.Random(tag)
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def iter_events(messages: list[KvMessage]) -> Iterator[dict[str, Any]]:
    """Every event map in ``messages``, in order."""
    for msg in messages:
        batch = msg.decoded()
        yield from batch[1]
