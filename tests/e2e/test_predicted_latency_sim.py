"""Predicted-latency routing end to end: real ``kvgate serve`` in front of two ``kvgate sim``
replicas, with llm-d's plugins, SLO headers and an InferenceObjective that makes requests
sheddable.

Replicas are made busy by streamed requests sent to them directly (not through the gateway),
held open until the gateway's scrape shows them running with warm KV caches; the requests
under test then meet a pool where no endpoint is idle or cold.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

pytestmark = pytest.mark.slow

MODEL = "sim-model"
OBJECTIVES = """apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 1, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: pool}}
"""


def config(producer_params: str) -> str:
    return f"""apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- {{type: predicted-latency-producer, parameters: {producer_params}}}
- {{type: latency-slo-admitter}}
- {{type: latency-scorer}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: latency-scorer}}, {{pluginRef: max-score-picker}}]
"""


@pytest.fixture
def sims(spawn: Callable[..., Proc]) -> list[SimHandle]:
    # 64 blocks of 16 tokens: one held request fills well over llm-d's 2 % "cold" line
    return [
        start_sim(spawn, model=MODEL, seed=i, num_gpu_blocks=64, name=f"sim{i}") for i in range(2)
    ]


def start_gateway(
    spawn: Callable[..., Proc], tmp: Path, sims: list[SimHandle], cfg: str
) -> tuple[str, Proc]:
    objectives = tmp / "objectives.yaml"
    objectives.write_text(OBJECTIVES)
    port = free_port()
    args = ["serve", "--port", str(port), "--log-format", "json", "--seed", "7",
            "--config-text", cfg, "--objectives", str(objectives)]  # fmt: skip
    for sim in sims:
        args += ["--endpoint", sim.url]
    proc = spawn(kvgate_cmd(*args), name="gw")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/ready", timeout_s=30)
    return url, proc


def request_lines(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "kvgate.requests":
                out.append(record)
    return out


def completion(url: str, rid: str, **headers: str) -> tuple[int, str]:
    """A short streamed completion through the gateway: (status, whole body)."""
    body = {"model": MODEL, "prompt": f"Say something about {rid}.", "max_tokens": 3,
            "stream": True}  # fmt: skip
    hdrs = {"x-request-id": rid, "Content-Type": "application/json",
            **{k.replace("_", "-"): v for k, v in headers.items()}}  # fmt: skip
    req = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers=hdrs, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gauge(url: str, name: str) -> dict[str, float]:
    out = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def hold(stack: ExitStack, sim: SimHandle) -> None:
    """A long streamed request held open on ``sim`` until ``stack`` closes."""
    # 64 blocks hold 1,024 tokens: ~100 prompt tokens and up to 800 generated (seconds)
    body = {"model": MODEL, "prompt": "hold " * 100, "max_tokens": 800, "stream": True}
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=30)
    stack.callback(conn.close)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.readline()  # it is running once the first chunk is out


def test_training_turns_on_predictions_after_min_samples(
    spawn: Callable[..., Proc], tmp_path: Path, sims: list[SimHandle]
) -> None:
    url, gw = start_gateway(spawn, tmp_path, sims, config("{streamingMode: true, minSamples: 4}"))
    for i in range(6):
        assert completion(url, f"t{i}")[0] == 200
    wait_until(lambda: len(request_lines(gw)) == 6, timeout_s=5, what="6 request lines")
    lines = request_lines(gw)
    scores = [{s["latency-scorer"] for s in line["scores"].values()} for line in lines]
    # untrained: llm-d's composite fallback ((free KV + relative queue + prefix) / 3, about
    # 2/3 on idle replicas); from the 5th request on, predictions: (int(100·x) + 1) / 100
    # capped at 1, the lowest predicted latency scoring 1 and two idle replicas that tie
    # (int(100·0.5) + 1) / 100
    assert all(min(s) > 0.6 and max(s) < 0.7 for s in scores[:4]), scores
    assert all(s == {0.51} or max(s) == 1.0 for s in scores[4:]), scores


def test_slo_headers_shed_sheddable_requests_and_route_the_rest(
    spawn: Callable[..., Proc], tmp_path: Path, sims: list[SimHandle]
) -> None:
    cfg = config("{streamingMode: true, latencyProfile: qwen3-0.6b-h100}")
    url, gw = start_gateway(spawn, tmp_path, sims, cfg)
    with ExitStack() as stack:
        for sim in sims:
            hold(stack, sim)

        def busy() -> bool:
            running = gauge(url, "kvgate_endpoint_running_requests").values()
            kv = gauge(url, "kvgate_endpoint_kv_cache_usage").values()
            return len(running) == 2 and min(running) >= 1 and min(kv) >= 0.02

        wait_until(busy, timeout_s=10, what="both replicas running with warm caches")
        impossible = {"x_slo_ttft_ms": "0.001"}
        shed = completion(url, "shed", x_gateway_inference_objective="batch",
                          **impossible)  # fmt: skip
        assert shed[0] == 500, shed
        assert "request cannot be admitted" in shed[1]
        # not sheddable: routed to the least bad endpoint
        kept = completion(url, "kept", x_gateway_inference_objective="critical",
                          **impossible)  # fmt: skip
        assert kept[0] == 200, kept
        # sheddable but servable in time
        easy = completion(url, "easy", x_gateway_inference_objective="batch",
                          x_slo_ttft_ms="60000", x_slo_tpot_ms="60000")  # fmt: skip
        assert easy[0] == 200, easy
    wait_until(lambda: len(request_lines(gw)) == 3, timeout_s=5, what="3 request lines")
    by_id = {line["request_id"]: line for line in request_lines(gw)}
    assert by_id["shed"]["status"] == 500 and by_id["shed"]["endpoint"] is None
    assert by_id["kept"]["endpoint"] and by_id["easy"]["endpoint"]
