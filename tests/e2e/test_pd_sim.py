"""Prefill/decode disaggregation end to end through real processes on loopback.

A prefill ``kvgate sim`` (``kv_producer``) and a decode one (``kv_consumer``), labelled with
``llm-d.ai/role``; in front of them either ``kvgate serve`` (which runs both legs itself) or
real Envoy + ``kvgate epp`` with ``kvgate sidecar`` before the decode replica (llm-d's
deployment shape). The decode replica's ``cached_tokens`` tells whether its prompt arrived
over the (simulated) KV link; each replica's ``vllm:prompt_tokens`` says who computed what.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

pytestmark = [pytest.mark.slow]

MODEL = "sim-model"
NIXL = '{"kv_connector":"NixlConnector","kv_role":"%s"}'
LONG = "The prefill replica computes this prompt and the decode replica pulls its KV. " * 30
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"

ALWAYS = """
apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters: {deciders: {prefill: always-disagg-pd-decider}}
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: max-score-picker}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: max-score-picker}]
"""

PREFIX_BASED = """
apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {autoTune: false, blockSizeTokens: 16}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 100}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-cache-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]
"""


def post(url: str, body: dict[str, Any], timeout_s: float = 30) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric(url: str, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def prompt_tokens(sim: SimHandle) -> float:
    return metric(sim.url + "/metrics", "vllm:prompt_tokens_total")


def cached(answer: dict[str, Any]) -> int:
    return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])


def replicas(
    spawn: Callable[..., Proc], tmp: Path, *prefill_args: str
) -> tuple[SimHandle, SimHandle, Path]:
    pre = start_sim(
        spawn, *prefill_args, name="prefill", speed=20, kv_transfer_config=NIXL % "kv_producer"
    )
    dec = start_sim(spawn, name="decode", speed=20, kv_transfer_config=NIXL % "kv_consumer")
    return pre, dec, endpoints_file(tmp, pre.url, dec.url)


def endpoints_file(tmp: Path, prefill_url: str, decode_url: str) -> Path:
    path = tmp / "endpoints.yaml"
    path.write_text(
        f"- url: {prefill_url}\n  labels: {{llm-d.ai/role: prefill}}\n"
        f"- url: {decode_url}\n  labels: {{llm-d.ai/role: decode}}\n"
    )
    return path


def start_serve(spawn: Callable[..., Proc], tmp: Path, endpoints: Path, config: str) -> str:
    (tmp / "epp.yaml").write_text(config)
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--seed", "7",
            "--endpoints-file", str(endpoints), "--config", str(tmp / "epp.yaml"),
        ),
        name="serve",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health", timeout_s=30)

    def both_in_rotation() -> bool:  # /ready is 200 with one: the prefill one may still lag
        with urllib.request.urlopen(url + "/ready", timeout=5) as resp:
            return bool(json.loads(resp.read())["endpoints_in_rotation"] == 2)

    wait_until(both_in_rotation, timeout_s=30, what="prefill and decode endpoints in rotation")
    return url


def test_serve_runs_both_legs_and_the_decider_decides(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    pre, dec, endpoints = replicas(spawn, tmp_path)
    gw = start_serve(spawn, tmp_path, endpoints, PREFIX_BASED)
    # 12 words of estimate: far below nonCachedTokens, decode alone
    status, short = post(gw + "/v1/completions", {"model": MODEL, "prompt": "hi " * 12})
    assert status == 200 and cached(short) == 0
    assert prompt_tokens(pre) == 0
    # long and uncached: prefill computes it, decode pulls all but the last token
    status, first = post(gw + "/v1/completions", {"model": MODEL, "prompt": LONG, "max_tokens": 3})
    assert status == 200, first
    n = first["usage"]["prompt_tokens"]
    assert cached(first) == n - 1
    assert prompt_tokens(pre) == n
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="ok"') == 1
    assert metric(dec.url + "/metrics", "vllm:prompt_tokens_by_source_total", "external") == n - 1
    # the same prompt again: the decode replica holds it, so no prefill leg
    status, again = post(gw + "/v1/completions", {"model": MODEL, "prompt": LONG})
    assert status == 200 and cached(again) >= n - 16
    assert prompt_tokens(pre) == n
    # streamed chat through both legs: the usage chunk reports the transferred prefix
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Chat " + LONG}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        gw + "/v1/chat/completions", json.dumps(chat).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        lines = [ln for ln in resp.read().decode().splitlines() if ln.startswith("data: {")]
    usage = json.loads(lines[-1][6:])["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_a_failing_prefill_falls_back_to_decode_only(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    _pre, _dec, endpoints = replicas(spawn, tmp_path, "--failure-rate", "1")
    gw = start_serve(spawn, tmp_path, endpoints, ALWAYS)
    status, answer = post(gw + "/v1/completions", {"model": MODEL, "prompt": LONG})
    assert status == 200, answer
    assert cached(answer) == 0  # the decode replica computed the prompt itself
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="http_error"') == 1
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="ok"') == 0


def test_a_prefill_without_transfer_params_is_counted_as_such(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """A prefill replica whose connector moves KV out of band (vLLM's ExampleConnector,
    LMCache) answers ``kv_transfer_params: null``, as a replica without a KV connector does:
    the decode leg goes without params and the leg counts as no_params, not as a failure."""
    pre = start_sim(spawn, name="prefill", speed=20)
    dec = start_sim(spawn, name="decode", speed=20)
    gw = start_serve(spawn, tmp_path, endpoints_file(tmp_path, pre.url, dec.url), ALWAYS)
    status, answer = post(gw + "/v1/completions", {"model": MODEL, "prompt": LONG})
    assert status == 200, answer
    assert prompt_tokens(pre) > 0  # the prefill leg ran
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="no_params"') == 1
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="bad_response"') == 0


def _envoy(tmp: Path, epp_port: int) -> str:
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=epp_port)
    cfg = envoyconfig.adapt(EXAMPLE, ports, access_log=tmp / "access.log")
    proc = Proc(envoyconfig.command(envoyconfig.write(cfg, tmp / "envoy.yaml")), tmp / "envoy.log")
    _procs.append(proc)
    proc.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    return f"http://127.0.0.1:{ports.listen}"


_procs: list[Proc] = []


@pytest.fixture
def envoy_procs() -> Any:
    yield _procs
    while _procs:
        _procs.pop().stop()


@pytest.mark.envoy
def test_sidecar_behind_envoy_and_epp(
    spawn: Callable[..., Proc], tmp_path: Path, envoy_procs: Any
) -> None:
    """llm-d's shape: Envoy asks ``kvgate epp``, which sets x-prefiller-host-port and sends
    the request to the decode pod's port, where ``kvgate sidecar`` runs the two legs; a
    prefill that hangs past ``--prefill-timeout`` falls back, and a client that leaves
    mid-prefill cancels the leg (the prefill replica counts an aborted request)."""
    # a slow prefill replica (real time, 32-token chunks: ~3.7 ms a 32 tokens) so that a long
    # prompt outlasts both the client's patience and the sidecar's --prefill-timeout
    pre = start_sim(
        spawn,
        name="prefill",
        speed=1,
        max_num_batched_tokens=32,
        kv_transfer_config=NIXL % "kv_producer",
    )
    dec = start_sim(spawn, name="decode", speed=20, kv_transfer_config=NIXL % "kv_consumer")
    side_port, side_metrics = free_port(), free_port()
    side = spawn(
        kvgate_cmd(
            "sidecar", "--host", "127.0.0.1", "--port", str(side_port),
            "--model-server-port", str(dec.port), "--metrics-port", str(side_metrics),
            "--prefill-timeout", "2",
        ),
        name="sidecar",
    )  # fmt: skip
    side.wait_http(f"http://127.0.0.1:{side_port}/health", timeout_s=30)
    endpoints = endpoints_file(tmp_path, pre.url, f"http://127.0.0.1:{side_port}")
    (tmp_path / "epp.yaml").write_text(ALWAYS)
    grpc, health, metrics = free_port(), free_port(), free_port()
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoints-file", str(endpoints), "--config-file", str(tmp_path / "epp.yaml"),
            "--refresh-metrics-interval", "50ms",
        ),
        name="epp",
    )  # fmt: skip
    epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=60)
    envoy = _envoy(tmp_path, grpc)
    side_url = f"http://127.0.0.1:{side_metrics}/metrics"

    def ready() -> bool:
        status, _ = post(
            envoy + "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}
        )
        return status == 200

    wait_until(ready, timeout_s=20, what="envoy -> epp -> sidecar answering")
    before = prompt_tokens(pre)
    status, answer = post(envoy + "/v1/completions", {"model": MODEL, "prompt": LONG})
    assert status == 200, answer
    n = answer["usage"]["prompt_tokens"]
    assert cached(answer) == n - 1
    assert prompt_tokens(pre) - before == n
    assert metric(side_url, "kvgate_pd_prefill_total", 'outcome="ok"') >= 2

    # a prefill leg past --prefill-timeout (2 s) is abandoned: decode-only, and the
    # prefill replica sees the leg cancelled (it aborts the request)
    aborted = 'finished_reason="abort"'
    slow = {"model": MODEL, "prompt": "slow " * 30_000, "max_tokens": 2}
    status, answer = post(envoy + "/v1/completions", slow)
    assert status == 200, answer
    assert cached(answer) == 0
    assert metric(side_url, "kvgate_pd_prefill_total", 'outcome="timeout"') == 1
    wait_until(
        lambda: metric(pre.url + "/metrics", "vllm:request_success_total", aborted) >= 1,
        timeout_s=10,
        what="the prefill replica to abort the abandoned leg",
    )
    # the client leaves while the prefill leg runs: the leg is cancelled with it
    leave = {"model": MODEL, "prompt": "gone " * 12_000, "max_tokens": 2}
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(envoy + "/v1/completions", leave, timeout_s=0.3)
    wait_until(
        lambda: metric(pre.url + "/metrics", "vllm:request_success_total", aborted) >= 2,
        timeout_s=10,
        what="the prefill replica to abort the leg of the client that left",
    )
    assert metric(side_url, "kvgate_pd_prefill_total", 'outcome="timeout"') == 1
