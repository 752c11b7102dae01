"""Multimodal encode/prefill/decode (E/P/D) end to end through real processes on loopback.

Three ``kvgate sim`` replicas labelled ``encode``, ``prefill`` and ``decode`` share an EC
store directory (vLLM's ``ECExampleConnector``: the encoder writes each image's entry, the
prefill replica loads it instead of encoding); ``kvgate serve`` runs llm-d's published
``sim-e-p-d-epp-config.yaml`` unchanged and so the encode leg, the prefill leg and the decode
leg itself. Each replica's ``kvgate_sim_mm_items_total{source}`` says who encoded what.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.test_pd_sim import NIXL, metric, post
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

pytestmark = [pytest.mark.slow]

MODEL = "sim-model"
CONFIG = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "llm-d-configs"
    / "llm-d-router__deploy_config_sim-e-p-d-epp-config.yaml"
)
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
