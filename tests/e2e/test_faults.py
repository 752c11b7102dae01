"""Faults around ``kvgate serve``, with real processes and raw sockets on loopback.

Each test injects one fault and checks that every request still ends in a success or an
explicit OpenAI-shaped error within its deadline, and that the gateway's request log says
what happened. The last test runs benchmarks/fault_run.py (600 requests under random replica
failures and kills) and requires the client's counts, ``kvgate_requests_total`` and the
request log to agree exactly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "sim-model"
METRICS_PAGE = (ROOT / "tests" / "data" / "vllm-cpu-metrics.txt").read_bytes()


# --- a raw socket model server that misbehaves on purpose ------------------------------------


class RawServer:
    """A thread answering GET /health and GET /metrics per ``metrics`` ('ok', '500', 'hang',
    'garbage'), and POSTs per ``post`` ('never': read the request, never answer; '500')."""

    def __init__(self, *, metrics: str = "ok", post: str = "never") -> None:
        self.metrics, self.post = metrics, post
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.posts = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                size = int(length.group(1)) if length else 0
                if len(rest) < size:
                    break
                buf = rest[size:]
                if not self._answer(conn, head.split(b" ", 2)):
                    return

    def _answer(self, conn: socket.socket, line: list[bytes]) -> bool:
        method, path = line[0], line[1]
        if method == b"POST":
            self.posts += 1
            if self.post == "never":
                return True  # read, and never answer
            body = b'{"error":{"message":"boom","type":"server_error","code":500}}'
            return self._send(conn, b"500 Internal Server Error", body)
        if path == b"/metrics":
            if self.metrics == "hang":
                return True
            if self.metrics == "500":
                return self._send(conn, b"500 Internal Server Error", b"no")
            if self.metrics == "garbage":
                return self._send(conn, b"200 OK", bytes(range(256)) * 40 + b"\n{{{ vllm:")
            return self._send(conn, b"200 OK", METRICS_PAGE)
        return self._send(conn, b"200 OK", b'{"status":"ok"}')

    def _send(self, conn: socket.socket, status: bytes, body: bytes) -> bool:
        head = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        try:
            conn.sendall(head + body)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(**kw: str) -> RawServer:
        made.append(RawServer(**kw))
        return made[-1]

    yield make
    for server in made:
        server.close()


# --- helpers --------------------------------------------------------------------------------


def start_serve(spawn: Callable[..., Proc], *args: str, port: int = 0) -> tuple[str, Proc]:
    port = port or free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--log-format", "json", "--seed", "3",
            "--refresh-metrics-interval", "50ms", *args,
        ),
        name="gw",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health", timeout_s=30)
    return url, proc


def post(
    url: str, body: dict[str, Any], timeout_s: float = 20
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hello there", "max_tokens": 4, **extra}


def is_openai_error(body: bytes) -> bool:
    doc = json.loads(body)
    return isinstance(doc.get("error"), dict) and isinstance(doc["error"].get("message"), str)


def metric_samples(url: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return {
        m.group(1) or "": float(m.group(2))
        for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    }


def in_rotation(url: str) -> set[str]:
    samples = metric_samples(url, "kvgate_endpoint_in_rotation")
    return {re.sub(r'.*endpoint="([^"]+)".*', r"\1", k) for k, v in samples.items() if v == 1}


def request_lines(proc: Proc) -> list[dict[str, Any]]:
    text = proc.log() if proc.alive() else proc.log_path.read_text(errors="replace")
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "kvgate.requests":
                out.append(record)
    return out


# --- the faults -----------------------------------------------------------------------------


def test_replica_killed_mid_stream(spawn: Callable[..., Proc]) -> None:
    sims = [start_sim(spawn, model=MODEL, speed=0.2, seed=i, name=f"sim{i}") for i in range(2)]
    url, gw = start_serve(spawn, *(a for s in sims for a in ("--endpoint", s.url)))
    wait_until(lambda: len(in_rotation(url)) == 2, timeout_s=10, what="both in rotation")
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    body = completion(max_tokens=200, ignore_eos=True, stream=True)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    served_by = resp.getheader("x-kvgate-endpoint") or ""
    victim = next(s for s in sims if s.url.endswith(f":{served_by.rsplit(':', 1)[-1]}"))
    assert resp.readline().startswith(b"data: ")
    started = time.monotonic()
    victim.proc.kill()
    rest = resp.read()
    conn.close()
    assert time.monotonic() - started < 5
    events = [ln[6:] for ln in rest.split(b"\n") if ln.startswith(b"data: ")]
    errors = [e for e in events if e.startswith(b'{"error"')]
    assert len(errors) == 1 and is_openai_error(errors[0]), rest[-500:]
    assert events[-1] == b"[DONE]"  # as vLLM ends a stream that failed
    survivor = next(s for s in sims if s is not victim)
    for _ in range(4):  # the dead replica is retried away from (connect errors), then dropped
        status, headers, _ = post(url, completion())
        assert status == 200 and headers["x-kvgate-endpoint"].endswith(f":{survivor.port}")
    lines = request_lines(gw)
    assert lines[0]["status"] == 200 and lines[0]["error"] == "stream_error", lines[0]


def test_replica_that_never_answers_is_timed_out_then_ejected(
    spawn: Callable[..., Proc], raw_servers: Callable[..., RawServer]
) -> None:
    """A replica that accepts, reads and never answers (its /metrics looks idle, so it wins
    picks): each attempt there ends at --request-timeout with a 504, and after
    --outlier-consecutive-failures it is out of rotation."""
    sim = start_sim(spawn, model=MODEL, speed=50)
    black = raw_servers(metrics="ok", post="never")
    url, _ = start_serve(
        spawn, "--endpoint", sim.url, "--endpoint", black.url, "--request-timeout", "500ms",
        "--outlier-consecutive-failures", "2", "--outlier-max-ejection-percent", "50",
    )  # fmt: skip
    wait_until(lambda: len(in_rotation(url)) == 2, timeout_s=10, what="both in rotation")
    statuses = []
    for _ in range(12):
        started = time.monotonic()
        status, _, body = post(url, completion(), timeout_s=5)
        assert time.monotonic() - started < 2.0
        statuses.append(status)
        if status != 200:
            assert status == 504 and is_openai_error(body), body
    assert black.posts <= 2 and statuses.count(504) == black.posts
    assert statuses[-3:] == [200, 200, 200]


def test_metrics_failing_hanging_or_garbage(
    spawn: Callable[..., Proc], raw_servers: Callable[..., RawServer]
) -> None:
    """Replicas whose /metrics answers 500, never answers or returns garbage stay out of
    rotation (their POSTs would answer 500), the healthy one serves everything, and the
    gateway's own /metrics and /ready stay quick."""
    sim = start_sim(spawn, model=MODEL, speed=50)
    bad = [raw_servers(metrics=kind, post="500") for kind in ("500", "hang", "garbage")]
    args = [a for s in (sim.url, *(b.url for b in bad)) for a in ("--endpoint", s)]
    url, _ = start_serve(spawn, *args)
    wait_until(lambda: in_rotation(url) == {f"127.0.0.1:{sim.port}"}, timeout_s=10, what="sim")
    for _ in range(10):
        status, headers, _ = post(url, completion())
        assert status == 200 and headers["x-kvgate-endpoint"].endswith(f":{sim.port}")
    assert sum(b.posts for b in bad) == 0
    started = time.monotonic()
    with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
        assert resp.status == 200
    metric_samples(url, "kvgate_requests_total")
    assert time.monotonic() - started < 1.0


def test_endpoints_file_rewritten_half_way(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """A writer caught half-way (the file truncated mid-line) leaves the endpoints as they
    were; the complete file then takes effect."""
    sims = [start_sim(spawn, model=MODEL, speed=50, seed=i, name=f"sim{i}") for i in range(2)]
    path = tmp_path / "endpoints.yaml"
    path.write_text(f"- {sims[0].url}\n")
    url, gw = start_serve(spawn, "--endpoints-file", str(path))
    wait_until(lambda: len(in_rotation(url)) == 1, timeout_s=10, what="one endpoint")
    full = f"- {sims[0].url}\n- {{url: {sims[1].url}, labels: {{zone: b}}}}\n"
    with path.open("w") as f:  # not atomic: the watcher may read any prefix of this
        f.write(full[: len(full) - 12])
    wait_until(lambda: "keeping the current endpoints" in gw.log(), timeout_s=10, what="refused")
    for _ in range(3):
        assert post(url, completion())[0] == 200
    assert in_rotation(url) == {f"127.0.0.1:{sims[0].port}"}
    path.write_text(full)
    wait_until(lambda: len(in_rotation(url)) == 2, timeout_s=10, what="both endpoints")


def test_gateway_restarted_under_load(spawn: Callable[..., Proc]) -> None:
    """Clients keep sending while the gateway is stopped (SIGTERM) and started again on the
    same port: every request ends with an answer or a prompt connection error, never hangs,
    and every answer is one request line in one of the two gateways' logs."""
    sim = start_sim(spawn, model=MODEL, speed=20)
    port = free_port()
    url, first = start_serve(spawn, "--endpoint", sim.url, port=port)
    stop = threading.Event()

    def client() -> list[tuple[int, float]]:
        seen = []
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = post(url, completion(max_tokens=16), timeout_s=10)[0]
            except OSError:
                status = 0  # refused or reset while no gateway listens
            seen.append((status, time.monotonic() - started))
        return seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        wait_until(lambda: len(request_lines(first)) >= 20, timeout_s=10, what="load")
        first.popen.send_signal(signal.SIGTERM)
        first.popen.wait(timeout=15)
        _, second = start_serve(spawn, "--endpoint", sim.url, port=port)
        wait_until(lambda: len(request_lines(second)) >= 20, timeout_s=10, what="load again")
        stop.set()
        seen = [s for f in futures for s in f.result(timeout=20)]
    second.stop()
    answered = [s for s, _ in seen if s]
    # 503 (no endpoints yet) while the new gateway's first scrape is under way
    assert set(answered) <= {200, 503} and answered.count(200) >= 40
    assert max(seconds for _, seconds in seen) < 5
    logged = request_lines(first) + request_lines(second)
    assert len(answered) == len(logged), (
        Counter(answered),
        Counter((r.get("status"), r.get("error")) for r in logged),
        len(seen) - len(answered),
    )


def test_random_faults_every_request_accounted(tmp_path: Path) -> None:
    out = tmp_path / "fault-run.json"
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "fault_run.py"),
            "--requests", "600", "--concurrency", "16", "--replicas", "2",
            "--kill-every", "200", "--failure-rate", "0.05", "--deadline-s", "10",
            "--out", str(out), "--keep-logs", str(tmp_path / "logs"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"], report
    assert report["client_by_status"] == report["metrics_by_status"] == report["log_by_status"]
    assert sum(report["client_by_status"].values()) == 600
    assert report["slowest_request_s"] < report["deadline_s"]
    assert proc.returncode == 0
