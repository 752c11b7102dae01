"""Multimodal encode/prefill/decode (E/P/D) end to end through real processes on loopback.

Three ``kvgate sim`` replicas labelled ``encode``, ``prefill`` and ``decode`` share an EC
store directory (vLLM's ``ECExampleConnector``: the encoder writes each image's entry, the
prefill replica loads it instead of encoding); ``kvgate serve`` runs llm-d's published
``sim-e-p-d-epp-config.yaml`` unchanged and so the encode leg, the prefill leg and the decode
leg itself; behind Envoy, ``kvgate epp`` runs ``sim-e-pd-epp-config.yaml`` and ``kvgate
sidecar`` the encode leg before its decode replica. Each replica's
``kvgate_sim_mm_items_total{source}`` says who encoded what.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.test_pd_sim import NIXL, _envoy, envoy_procs, metric, post
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

pytestmark = [pytest.mark.slow]

MODEL = "sim-model"
CONFIGS = Path(__file__).resolve().parents[1] / "data" / "llm-d-configs"
CONFIG = CONFIGS / "llm-d-router__deploy_config_sim-e-p-d-epp-config.yaml"
E_PD = CONFIGS / "llm-d-router__deploy_config_sim-e-pd-epp-config.yaml"
__all__ = ["envoy_procs"]  # a fixture from test_pd_sim, used by parameter name
EC = '{"ec_connector":"ECExampleConnector","ec_role":"%s","ec_connector_extra_config":{"shared_storage_path":"%s"}}'
TEXT = "Describe what the two pictures have in common, in detail please. " * 8


def _items(sim: SimHandle, source: str) -> float:
    return metric(sim.url + "/metrics", "kvgate_sim_mm_items_total", f'source="{source}"')


def _image(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_serve_runs_the_encode_leg_before_prefill_and_decode(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    store = tmp_path / "ec"
    enc = start_sim(spawn, name="encode", speed=20, ec_transfer_config=EC % ("ec_producer", store))
    pre = start_sim(
        spawn,
        name="prefill",
        speed=20,
        kv_transfer_config=NIXL % "kv_producer",
        ec_transfer_config=EC % ("ec_consumer", store),
    )
    dec = start_sim(spawn, name="decode", speed=20, kv_transfer_config=NIXL % "kv_consumer")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        "".join(
            f"- url: {sim.url}\n  labels: {{llm-d.ai/role: {role}}}\n"
            for sim, role in ((enc, "encode"), (pre, "prefill"), (dec, "decode"))
        )
    )
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoints-file", str(endpoints),
            "--config", str(CONFIG),
        ),
        name="serve",
    )  # fmt: skip
    gw = f"http://127.0.0.1:{port}"
    proc.wait_http(gw + "/health", timeout_s=30)

    def all_in_rotation() -> bool:
        with urllib.request.urlopen(gw + "/ready", timeout=5) as resp:
            return bool(json.loads(resp.read())["endpoints_in_rotation"] == 3)

    wait_until(all_in_rotation, timeout_s=30, what="the three endpoints in rotation")

    cat, dog = _image("http://img.test/cat.png"), _image("http://img.test/dog.png")
    content = [{"type": "text", "text": TEXT}, cat, dog, cat]  # the cat twice: encoded once
    chat = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    status, answer = post(gw + "/v1/chat/completions", chat)
    assert status == 200, answer
    assert metric(gw + "/metrics", "kvgate_epd_encode_total", 'outcome="ok"') == 2
    assert _items(enc, "encoded") == 2  # one encode request per distinct image
    assert len(list(store.iterdir())) == 2
    assert _items(pre, "ec_store") == 2 and _items(pre, "encoded") == 0
    assert metric(gw + "/metrics", "kvgate_pd_prefill_total", 'outcome="ok"') == 1
    n = answer["usage"]["prompt_tokens"]
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == n - 1  # KV pulled
    assert _items(dec, "encoded") == 0

    # text only: no encode leg at all
    text = {"model": MODEL, "messages": [{"role": "user", "content": "plain " + TEXT}]}
    status, answer = post(gw + "/v1/chat/completions", text)
    assert status == 200, answer
    assert metric(gw + "/metrics", "kvgate_epd_encode_total", 'outcome="ok"') == 2
    assert _items(enc, "encoded") == 2


@pytest.mark.envoy
def test_sidecar_runs_the_encode_leg_behind_envoy_and_epp(
    spawn: Callable[..., Proc], tmp_path: Path, envoy_procs: object
) -> None:
    """llm-d's E/PD shape: ``kvgate epp`` sets x-encoder-hosts-ports for a request with an
    image and sends it to the decode pod, where ``kvgate sidecar --ec-connector ec-example``
    runs the encode leg and then the decode replica loads the image from the EC store."""
    store = tmp_path / "ec"
    enc = start_sim(spawn, name="encode", speed=20, ec_transfer_config=EC % ("ec_producer", store))
    dec = start_sim(spawn, name="decode", speed=20, ec_transfer_config=EC % ("ec_consumer", store))
    side_port, side_metrics = free_port(), free_port()
    side = spawn(
        kvgate_cmd(
            "sidecar", "--host", "127.0.0.1", "--port", str(side_port),
            "--model-server-port", str(dec.port), "--metrics-port", str(side_metrics),
            "--ec-connector", "ec-example",
        ),
        name="sidecar",
    )  # fmt: skip
    side.wait_http(f"http://127.0.0.1:{side_port}/health", timeout_s=30)
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        f"- url: {enc.url}\n  labels: {{llm-d.ai/role: encode}}\n"
        f"- url: http://127.0.0.1:{side_port}\n  labels: {{llm-d.ai/role: decode}}\n"
    )
    grpc, health, metrics = free_port(), free_port(), free_port()
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoints-file", str(endpoints), "--config-file", str(E_PD),
            "--refresh-metrics-interval", "50ms",
        ),
        name="epp",
    )  # fmt: skip
    epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=60)
    envoy = _envoy(tmp_path, grpc)
    text = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    wait_until(
        lambda: post(envoy + "/v1/chat/completions", text)[0] == 200,
        timeout_s=20,
        what="envoy -> epp -> sidecar answering",
    )
    assert _items(enc, "encoded") == 0  # text: no encode leg
    content = [{"type": "text", "text": TEXT}, _image("http://img.test/owl.png")]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    status, answer = post(envoy + "/v1/chat/completions", chat)
    assert status == 200, answer
    side_url = f"http://127.0.0.1:{side_metrics}/metrics"
    assert metric(side_url, "kvgate_epd_encode_total", 'outcome="ok"') == 1
    assert _items(enc, "encoded") == 1
    assert _items(dec, "ec_store") == 1 and _items(dec, "encoded") == 0
