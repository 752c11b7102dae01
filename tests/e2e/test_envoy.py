"""Real Envoy -> ext_proc -> ``kvgate epp`` -> simulator replicas, all on loopback.

Envoy runs the shipped examples/envoy/envoy.yaml (only ports, the access-log path and the
knob under test changed); ``kvgate epp`` is a real subprocess reading a static endpoints
file; the replicas are ``kvgate sim`` processes behind Envoy's ORIGINAL_DST cluster. The
access log's ``upstream=`` field says which replica served each request (matched by the
``x-request-id`` the test sets).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import sim_args

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"
MODEL = "sim-model"
# ~2,400 characters: dozens of prefix blocks, far longer than any one-block chance match
LONG_PROMPT = "You are a careful assistant for the kvgate project. " * 48
OTHER_PROMPT = "Summarise the history of the printing press in plain words. " * 40


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    request_id: str


@dataclass
class Envoy:
    proc: Proc
    url: str
    admin: str
    access_log: Path

    def post(
        self, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
    ) -> Reply:
        rid = str(uuid.uuid4())
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            headers={"content-type": "application/json", "x-request-id": rid, **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed = (
                json.loads(raw) if raw and not raw.startswith(b"data:") else {"raw": raw.decode()}
            )
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return Reply(status, parsed, {k.lower(): v for k, v in hdrs.items()}, rid)

    def served_by(self, request_id: str) -> tuple[str, str]:
        """(upstream host, envoy.lb metadata) logged for the request."""
        pattern = re.compile(rf"upstream=(\S+) epp=(\S+) rid={re.escape(request_id)} ")
        found: list[tuple[str, str]] = []

        def logged() -> bool:
            m = pattern.search(self.access_log.read_text()) if self.access_log.exists() else None
            if m:
                found.append((m.group(1), m.group(2)))
            return bool(m)

        wait_until(logged, timeout_s=5, what=f"access log line for {request_id}")
        return found[0]


@dataclass
class Rig:
    grpc_server: str  # kvgate epp --grpc-server
    sims: dict[str, Proc]  # "127.0.0.1:port" -> process
    epp: Proc
    epp_port: int
    metrics_url: str
    envoy: Envoy
    tmp: Path


def start_envoy(tmp: Path, name: str, epp_port: int, **options: Any) -> Envoy:
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=epp_port)
    log = tmp / f"{name}-access.log"
    cfg = envoyconfig.adapt(EXAMPLE, ports, access_log=log, **options)
    path = envoyconfig.write(cfg, tmp / f"{name}.yaml")
    proc = Proc(envoyconfig.command(path), tmp / f"{name}.log")
    admin = f"http://127.0.0.1:{ports.admin}"
    proc.wait_http(admin + "/ready", timeout_s=30)
    return Envoy(proc, f"http://127.0.0.1:{ports.listen}", admin, log)


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 4, **extra}


def ready_pods(rig: Rig) -> float:
    with urllib.request.urlopen(rig.metrics_url, timeout=2) as resp:
        text = resp.read().decode()
    m = re.search(r'^inference_pool_ready_pods\{name="static"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else -1.0


def metric_sum(rig: Rig, name: str) -> float:
    with urllib.request.urlopen(rig.metrics_url, timeout=2) as resp:
        text = resp.read().decode()
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    )


def start_epp(
    tmp: Path, name: str, endpoints: Path, grpc_server: str, *extra: str
) -> tuple[Proc, int, int]:
    """``kvgate epp`` over the endpoints file on free ports: (process, gRPC port, metrics port)."""
    port, health, metrics = free_port(), free_port(), free_port()
    epp = Proc(
        kvgate_cmd(
            "epp",
            "--host", "127.0.0.1",
            "--grpc-port", str(port),
            "--grpc-health-port", str(health),
            "--metrics-port", str(metrics),
            "--endpoints-file", str(endpoints),
            "--grpc-server", grpc_server,
            *extra,
        ),
        tmp / f"{name}.log",
    )  # fmt: skip
    return epp, port, metrics


@pytest.fixture(scope="module", params=["h2", "grpcio"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The whole module runs once per ext_proc server (``kvgate epp --grpc-server``)."""
    tmp = tmp_path_factory.mktemp(f"envoy-e2e-{request.param}")
    procs: list[Proc] = []
    try:
        sims: dict[str, Proc] = {}
        for i in range(2):
            port = free_port()
            proc = Proc(
                kvgate_cmd(*sim_args(model=MODEL, port=port, speed=50, seed=i)),
                tmp / f"sim{i}.log",
            )
            procs.append(proc)
            sims[f"127.0.0.1:{port}"] = proc
        endpoints = tmp / "endpoints.yaml"
        endpoints.write_text("".join(f"- http://{hp}\n" for hp in sims))
        epp, epp_port, metrics_port = start_epp(
            tmp, "epp", endpoints, request.param,
            "--policy", "llm-d-default",
            "--zap-encoder", "json",
            "--refresh-metrics-interval", "50ms",
        )  # fmt: skip
        procs.append(epp)
        for hp, proc in sims.items():
            proc.wait_http(f"http://{hp}/health", timeout_s=90)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        epp.wait_http(f"http://127.0.0.1:{metrics_port}/healthz", timeout_s=90)
        envoy = start_envoy(tmp, "envoy", epp_port)
        procs.append(envoy.proc)
        the_rig = Rig(request.param, sims, epp, epp_port, metrics_url, envoy, tmp)
        wait_until(lambda: ready_pods(the_rig) == 2, timeout_s=10, what="both replicas in rotation")
        yield the_rig
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_prefix_affinity_through_envoy(rig: Rig) -> None:
    first = rig.envoy.post("/v1/completions", completion(LONG_PROMPT))
    assert first.status == 200, first.body
    home, metadata = rig.envoy.served_by(first.request_id)
    assert home in rig.sims
    assert metadata == home  # envoy.lb dynamic metadata carries the same pick as the header
    assert first.headers.get("x-went-into-resp-headers") == "true"
    cached = []
    for _ in range(4):
        again = rig.envoy.post("/v1/completions", completion(LONG_PROMPT))
        assert again.status == 200, again.body
        assert rig.envoy.served_by(again.request_id)[0] == home
        details = again.body["usage"].get("prompt_tokens_details") or {}
        cached.append(details.get("cached_tokens") or 0)
    assert min(cached) > 0, cached  # the replica really had the prefix in its KV cache
    # a different long prompt is free to go anywhere, but must succeed
    other = rig.envoy.post(
        "/v1/chat/completions",
        {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": OTHER_PROMPT}]},
    )
    assert other.status == 200, other.body


def test_streamed_usage_reaches_the_completion_hooks(rig: Rig) -> None:
    before = metric_sum(rig, "inference_objective_output_tokens_count")
    reply = rig.envoy.post(
        "/v1/completions",
        completion(OTHER_PROMPT, stream=True, stream_options={"include_usage": True}),
    )
    assert reply.status == 200
    assert "[DONE]" in reply.body["raw"]
    wait_until(
        lambda: metric_sum(rig, "inference_objective_output_tokens_count") > before,
        timeout_s=5,
        what="usage parsed from the SSE stream",
    )


def test_spoofed_destination_header_never_steers(rig: Rig) -> None:
    home = rig.envoy.served_by(
        rig.envoy.post("/v1/completions", completion(LONG_PROMPT)).request_id
    )[0]
    other = next(hp for hp in rig.sims if hp != home)
    spoof = {"x-gateway-destination-endpoint": other}
    # through the shipped config (which also strips the header at the edge) ...
    reply = rig.envoy.post("/v1/completions", completion(LONG_PROMPT), spoof)
    assert reply.status == 200
    assert rig.envoy.served_by(reply.request_id)[0] == home
    # ... and with the edge strip removed, so only kvgate's overwrite stands in the way
    bare = start_envoy(rig.tmp, "envoy-nostrip", rig.epp_port, strip_destination_header=False)
    try:
        for target in (other, "127.0.0.1:1"):
            reply = bare.post(
                "/v1/completions",
                completion(LONG_PROMPT),
                {"x-gateway-destination-endpoint": target},
            )
            assert reply.status == 200, reply.body
            assert bare.served_by(reply.request_id)[0] == home
    finally:
        bare.proc.stop()


def test_envoy_reaches_a_secure_serving_epp(rig: Rig) -> None:
    """--secure-serving (a certificate generated at start) behind Envoy's TLS cluster, as
    GIE deploys it; the EPP's certificate is not verified (examples/envoy/envoy.yaml)."""
    epp, port, metrics = start_epp(
        rig.tmp, "epp-tls", rig.tmp / "endpoints.yaml", rig.grpc_server, "--secure-serving"
    )
    envoy = None
    try:
        epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=60)
        envoy = start_envoy(rig.tmp, "envoy-tls", port, epp_tls=True)
        reply = envoy.post("/v1/completions", completion(LONG_PROMPT))
        assert reply.status == 200, reply.body
        assert envoy.served_by(reply.request_id)[0] in rig.sims
    finally:
        if envoy is not None:
            envoy.proc.stop()
        epp.stop()


def test_bad_bodies_get_an_immediate_400(rig: Rig) -> None:
    reply = rig.envoy.post("/v1/completions", b'{"model": "sim-model", "prompt": ')
    assert reply.status == 400
    assert reply.body["error"]["type"] == "invalid_request_error"
    assert "JSON" in reply.body["error"]["message"]
    reply = rig.envoy.post("/v1/completions", {"prompt": "no model"})
    assert reply.status == 400
    assert reply.body["error"]["param"] == "model"


def test_fail_closed_and_fail_open_with_the_epp_down(rig: Rig) -> None:
    dead = free_port()  # nothing listens here: the EPP is "down"
    fallback = [(hp.split(":")[0], int(hp.split(":")[1])) for hp in rig.sims]
    closed = start_envoy(rig.tmp, "envoy-failclose", dead, failure_mode_allow=False)
    # Fail-open uses BUFFERED bodies: in FULL_DUPLEX_STREAMED mode Envoy 1.40 answers 500
    # despite failure_mode_allow whenever the body already went to the (dead) processor,
    # which races with the connect error (seen both ways here; examples/envoy/README.md).
    opened = start_envoy(
        rig.tmp,
        "envoy-failopen",
        dead,
        failure_mode_allow=True,
        fallback=fallback,
        body_mode="BUFFERED",
    )
    try:
        reply = closed.post("/v1/completions", completion("hello"))
        assert reply.status == 500
        assert closed.served_by(reply.request_id)[0] == "-"
        served = set()
        for _ in range(4):
            reply = opened.post("/v1/completions", completion("hello"))
            assert reply.status == 200, reply.body
            served.add(opened.served_by(reply.request_id)[0])
        assert served and served <= set(rig.sims)  # the gateway's own pick (round robin)
    finally:
        for envoy in (closed, opened):
            envoy.proc.stop()


@pytest.mark.parametrize(
    ("header_mode", "body_mode"),
    [("SEND", "NONE"), ("SKIP", "NONE")],
    ids=["headers-only", "no-response"],
)
def test_lean_response_modes_still_complete_requests(
    rig: Rig, header_mode: str, body_mode: str
) -> None:
    """Response bodies bypass the EPP (fewer gRPC messages per request); the completion
    hooks still run once per request, without usage."""
    lean = start_envoy(
        rig.tmp,
        f"envoy-lean-{header_mode}",
        rig.epp_port,
        response_header_mode=header_mode,
        response_body_mode=body_mode,
    )
    broken_before = metric_sum(rig, 'kvgate_epp_streams_total{outcome="broken"}')
    try:
        home = None
        for body in (completion(LONG_PROMPT), completion(LONG_PROMPT, stream=True)):
            reply = lean.post("/v1/completions", body)
            assert reply.status == 200, reply.body
            served = lean.served_by(reply.request_id)[0]
            home = home or served
            assert served == home
        wait_until(
            lambda: metric_sum(rig, "inference_objective_running_requests") == 0,
            timeout_s=5,
            what="completion hooks ran",
        )
        assert metric_sum(rig, 'kvgate_epp_streams_total{outcome="broken"}') == broken_before
    finally:
        lean.proc.stop()


def test_a_dying_replica_leaves_rotation(rig: Rig) -> None:
    """Runs last in this module: it kills a replica."""
    home = rig.envoy.served_by(
        rig.envoy.post("/v1/completions", completion(LONG_PROMPT)).request_id
    )[0]
    survivor = next(hp for hp in rig.sims if hp != home)
    rig.sims[home].kill()
    wait_until(lambda: ready_pods(rig) == 1, timeout_s=10, what="dead replica out of rotation")
    for _ in range(5):
        reply = rig.envoy.post("/v1/completions", completion(LONG_PROMPT))
        assert reply.status == 200, reply.body
        assert rig.envoy.served_by(reply.request_id)[0] == survivor
    assert rig.epp.alive()
