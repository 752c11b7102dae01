"""LoRA end to end: two real ``kvgate sim`` replicas loaded with different adapters
(``--enable-lora --lora-modules name=path``, as ``kvgate render`` and ``kvgate up`` pass them
to vLLM) behind a real ``kvgate serve`` running ``lora-affinity-scorer``.

* an adapter only one replica loads is always sent there: the replica lists its adapters in
  /v1/models and the gateway keeps only the endpoints serving the requested model;
* an adapter both replicas load goes where it is already running: the replica reports it in
  ``vllm:lora_requests_info{running_lora_adapters=...}`` while a request for it runs, as
  vLLM does, and the scorer gives that replica 1.0 against 0.8 for a free slot elsewhere.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: lora-affinity-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: lora-affinity-scorer
  - pluginRef: max-score-picker
"""


def post(base: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(resp.status), {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def lora_info(sim: SimHandle) -> dict[str, str]:
    """The labels of the replica's ``vllm:lora_requests_info`` sample."""
    found = re.search(r"^vllm:lora_requests_info\{([^}]*)\}", get_text(sim.url + "/metrics"), re.M)
    assert found, "vllm:lora_requests_info missing"
    return dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))


def test_requests_for_an_adapter_go_to_the_replica_that_has_it(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    common: dict[str, Any] = {"model": "base", "enable_lora": True, "max_loras": 1}
    a = start_sim(spawn, lora_modules=["sql-lora=/a/sql", "shared-lora=/a/shared"], **common)
    b = start_sim(spawn, lora_modules=["chat-lora=/b/chat", "shared-lora=/b/shared"], **common)
    assert lora_info(a) == {
        "max_lora": "1",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }
    config = tmp_path / "epp.yaml"
    config.write_text(CONFIG)
    port = free_port()
    gateway = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--config", str(config), "--seed", "3",
            "--endpoint", a.url, "--endpoint", b.url,
        ),
        name="gw",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    gateway.wait_http(base + "/health", timeout_s=30)
    served_by = {a.url.removeprefix("http://"): "a", b.url.removeprefix("http://"): "b"}

    def listed() -> bool:  # both replicas' /v1/models have been read
        models = {m["id"] for m in json.loads(get_text(base + "/v1/models"))["data"]}
        return models >= {"base", "sql-lora", "chat-lora", "shared-lora"}

    wait_until(listed, timeout_s=30, what="the gateway lists every adapter")

    def route(model: str) -> str:
        status, headers, body = post(
            base, "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}
        )
        assert status == 200, body
        assert json.loads(body)["model"] == model
        return served_by[headers["x-kvgate-endpoint"]]

    assert {route("sql-lora") for _ in range(6)} == {"a"}
    assert {route("chat-lora") for _ in range(6)} == {"b"}

    # a long request for the shared adapter runs on one replica...
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "shared-lora", "prompt": "hi", "max_tokens": 4000, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    holder = served_by[resp.getheader("x-kvgate-endpoint", "")]
    resp.readline()  # its first event: it is running
    sims = {"a": a, "b": b}
    other = "b" if holder == "a" else "a"
    try:
        # ...which says so in vllm:lora_requests_info, as vLLM does
        wait_until(
            lambda: lora_info(sims[holder])["running_lora_adapters"] == "shared-lora",
            timeout_s=10,
            what="the adapter shows as running",
        )
        assert lora_info(sims[other])["running_lora_adapters"] == ""

        def scored() -> dict[str, float]:
            status, _, report = post(
                base, "/debug/explain", {"model": "shared-lora", "prompt": "x"}
            )
            assert status == 200, report
            return {
                served_by[row["name"]]: row["scores"].get("lora-affinity-scorer", -1.0)
                for row in json.loads(report)["endpoints"]
            }

        # once the gateway has scraped it, the adapter's residency decides
        wait_until(
            lambda: scored() == {holder: 1.0, other: 0.8},
            timeout_s=10,
            what="lora-affinity-scorer sees the running adapter",
        )
        assert {route("shared-lora") for _ in range(4)} == {holder}
    finally:
        conn.close()
