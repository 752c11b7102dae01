"""Envoy's ext_proc stream reset mid-request: ``kvgate epp`` SIGKILLed under Envoy while
streams are in flight and new requests keep coming, then started again on the same port.

Envoy keeps one ext_proc stream per HTTP request open for the whole exchange
(FULL_DUPLEX_STREAMED, ``failure_mode_allow: false`` as the shipped example). When the EPP
dies every one of them resets at the transport. Every request must be accounted for:

- a request whose response had not started gets Envoy's own 500 (fail-closed); just after
  the restart, before the new EPP's first scrape, the EPP's own 503 (no replica known yet);
- a stream already relaying tokens is ended by Envoy at once: its response stops without
  the final ``data: [DONE]`` (no hang, no error status: the 200 was sent);
- every request has exactly one line in Envoy's access log with the status the client saw;
- once the EPP is back, Envoy reconnects on its own and requests succeed again.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

MODEL = "sim-model"
ENVOY_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"


@dataclass
class Outcome:
    rid: str
    stream: bool
    status: int = 0  # 0: no status line (the connection broke first)
    tokens: int = 0
    done: bool = False  # saw data: [DONE]
    error: str | None = None  # how the read ended early, if it did
    body: bytes = b""  # an error answer's body


def request(port: int, *, stream: bool, max_tokens: int, started: threading.Event) -> Outcome:
    out = Outcome(str(uuid.uuid4()), stream)
    body = {"model": MODEL, "prompt": "reset me", "max_tokens": max_tokens, "ignore_eos": True}
    if stream:
        body["stream"] = True
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(
            "POST",
            "/v1/completions",
            json.dumps(body),
            {"Content-Type": "application/json", "x-request-id": out.rid},
        )
        resp = conn.getresponse()
        out.status = resp.status
        while line := resp.readline():
            if out.status >= 400:
                out.body += line
            if line.startswith(b"data: {"):
                out.tokens += 1
                started.set()
            out.done = out.done or line.startswith(b"data: [DONE]") or (not stream and b"}" in line)
    except (OSError, http.client.HTTPException) as exc:
        out.error = type(exc).__name__
    finally:
        conn.close()
    return out


def start_epp(
    spawn: Callable[..., Proc], endpoints: Path, ports: tuple[int, int, int], name: str
) -> Proc:
    grpc_port, health, metrics = ports
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoints-file", str(endpoints), "--refresh-metrics-interval", "50ms",
            "--zap-encoder", "json",
        ),
        name=name,
    )  # fmt: skip
    epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=30)
    return epp


def test_epp_killed_under_envoy_mid_request(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    sims = [start_sim(spawn, model=MODEL, speed=0.5, seed=i, name=f"sim{i}") for i in range(2)]
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("".join(f"- {sim.url}\n" for sim in sims))
    epp_ports = (free_port(), free_port(), free_port())
    epp = start_epp(spawn, endpoints, epp_ports, "epp")
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=epp_ports[0])
    access_log = tmp_path / "access.log"
    cfg = envoyconfig.adapt(ENVOY_EXAMPLE, ports, access_log=access_log)
    envoy = spawn(envoyconfig.command(envoyconfig.write(cfg, tmp_path / "envoy.yaml")), "envoy")
    envoy.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    warm = request(ports.listen, stream=False, max_tokens=2, started=threading.Event())
    assert warm.status == 200, warm

    outcomes: list[Outcome] = [warm]
    lock = threading.Lock()
    stop = threading.Event()
    streaming = [threading.Event() for _ in range(4)]

    def streamer(started: threading.Event) -> None:
        # ~100 tokens at --speed 0.5: far longer than the test needs the EPP dead for
        result = request(ports.listen, stream=True, max_tokens=400, started=started)
        with lock:
            outcomes.append(result)

    def client() -> None:  # short requests, back to back, across the kill and the restart
        while not stop.is_set():
            result = request(ports.listen, stream=False, max_tokens=2, started=threading.Event())
            with lock:
                outcomes.append(result)
            stop.wait(0.02)  # paced (about 50 requests/s each), not a readiness wait

    threads = [threading.Thread(target=streamer, args=(ev,), daemon=True) for ev in streaming]
    threads += [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for started in streaming:
        assert started.wait(15), "a stream never started"
    epp.popen.send_signal(signal.SIGKILL)
    epp.popen.wait(5)
    # Fail-closed while the EPP is gone: requests are refused by Envoy, promptly.
    wait_until(
        lambda: any(o.status >= 500 for o in outcomes[1:]),
        timeout_s=10,
        what="Envoy to answer a request with the EPP down",
    )
    restarted = time.monotonic()
    epp = start_epp(spawn, endpoints, epp_ports, "epp-again")
    # Recovery: Envoy reconnects on its own and requests succeed again.
    mark = len(outcomes)
    wait_until(
        lambda: any(o.status == 200 and o.done for o in outcomes[mark:]),
        timeout_s=15,
        what="a request to succeed after the EPP restarted",
    )
    recovered_s = time.monotonic() - restarted
    stop.set()
    for thread in threads:
        thread.join(25)
        assert not thread.is_alive(), "a request never ended"

    # Every request ended: complete, refused with a 5xx, or a stream cut short.
    kinds = Counter(
        "ok" if o.status == 200 and o.done and o.error is None
        else "5xx" if o.status >= 500
        else "cut" if o.status == 200  # the 200 went out, then Envoy ended the response
        else f"other:{o.status}:{o.error}"
        for o in outcomes
    )  # fmt: skip
    assert set(kinds) <= {"ok", "5xx", "cut"}, (kinds, outcomes)
    # Envoy's own answer for a failed ext_proc stream, fail-closed: a 500 with no body; and
    # from the restarted EPP before its first scrape, its own OpenAI-shaped 503
    for o in outcomes:
        if o.status == 500:
            assert o.body == b"", o
        elif o.status == 503:
            assert json.loads(o.body)["error"]["code"] == 503, o
        else:
            assert o.status < 500, o
    assert kinds["5xx"] >= 1 and kinds["ok"] >= 2, kinds
    # the streams open at the kill lost their ext_proc stream: Envoy ended each one early
    # (its response ends without vLLM's final "data: [DONE]"), none hung
    streams = [o for o in outcomes if o.stream]
    assert len(streams) == 4 and all(o.status == 200 and not o.done for o in streams), streams
    # one access-log line per request, with the status the client saw (Envoy logs a
    # downstream reset mid-response with the 200 it had sent)
    logged: dict[str, str] = {}

    def all_logged() -> bool:
        text = access_log.read_text() if access_log.exists() else ""
        logged.clear()
        for m in re.finditer(r'" (\d+) (\S+) upstream=\S+ epp=\S+ rid=(\S+) ', text):
            assert m.group(3) not in logged, f"two access-log lines for {m.group(3)}"
            logged[m.group(3)] = m.group(1)
        return all(o.rid in logged for o in outcomes)

    wait_until(all_logged, timeout_s=10, what="an access-log line for every request")
    mismatched = [(o, logged[o.rid]) for o in outcomes if int(logged[o.rid]) != o.status]
    assert not mismatched, mismatched
    print(f"outcomes {dict(kinds)}; recovered {recovered_s:.2f}s after the restart began")
