"""disaggregatedset-rollout-screener in ``kvgate serve``'s request path, over a rollout that
progresses while it serves.

Four named endpoints share one real ``kvgate sim`` (the screener reads only labels; the
``x-kvgate-endpoint`` header names which one served). The endpoints file is rewritten mid-test,
as a rollout adds a revision's missing role, and the gateway's file watcher picks it up.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from support.envoy import start_epp_behind_envoy
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disaggregatedset-rollout-screener
  parameters:
    scope: {labelSelector: "disaggregatedset.x-k8s.io/name=set"}
    headerSelectors:
    - {name: revision, headerName: x-disagg-revision, labelKey: disaggregatedset.x-k8s.io/revision, mode: strict}
    revisionGating: {mode: sum, requireRoles: {values: [prefill, decode]}}
- type: decode-filter
- type: random-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: decode-filter}, {pluginRef: random-picker}]
"""


def endpoint(url: str, name: str, revision: str, role: str) -> dict[str, object]:
    labels = {
        "disaggregatedset.x-k8s.io/name": "set",
        "disaggregatedset.x-k8s.io/revision": revision,
        "disaggregatedset.x-k8s.io/role": role,
        "llm-d.ai/role": role,
    }
    return {"url": url, "name": name, "labels": labels}


def served(url: str, revision: str = "", *, stream: bool = False) -> tuple[int, str, str]:
    """(status, the endpoint that served, the stamped x-disagg-revision); through Envoy,
    which names no endpoint, the served one is ''."""
    body = json.dumps(
        {"model": "sim-model", "prompt": "hi", "max_tokens": 1, "stream": stream}
    ).encode()
    headers = {"content-type": "application/json"}
    if revision:
        headers["x-disagg-revision"] = revision
    req = urllib.request.Request(url + "/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            stamp = resp.headers["x-disagg-revision"]
            return resp.status, resp.headers.get("x-kvgate-endpoint", ""), stamp
    except urllib.error.HTTPError as exc:
        return exc.code, "", json.loads(exc.read())["error"]["message"]


def test_requests_stay_on_one_covered_revision_as_the_rollout_progresses(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    sim = start_sim(spawn, seed=5, speed=500)
    old = [
        endpoint(sim.url, "a-prefill", "A", "prefill"),
        endpoint(sim.url, "a-decode", "A", "decode"),
    ]
    new_decode = endpoint(sim.url, "b-decode", "B", "decode")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump([*old, new_decode]))
    port = free_port()
    gw = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoints-file", str(endpoints),
            "--config-text", CONFIG,
        ),
        name="serve",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    gw.wait_http(url + "/ready", timeout_s=30)
    # revision B has no prefill yet: it gets nothing, and asking for it fails closed
    wait_until(lambda: served(url)[0] == 200, timeout_s=10, what="the endpoints in rotation")
    assert {served(url) for _ in range(12)} == {(200, "a-decode", "A")}
    status, _, message = served(url, "B")
    assert (status, message) == (503, "screeners eliminated all endpoint candidates")
    # the rollout adds B's prefill: both revisions are covered, weights 2 and 2
    endpoints.write_text(
        yaml.safe_dump([*old, new_decode, endpoint(sim.url, "b-prefill", "B", "prefill")])
    )

    def both_serve() -> bool:
        return len({served(url)[1] for _ in range(8)}) == 2

    wait_until(both_serve, timeout_s=10, what="revision B taking traffic")
    counts = Counter(served(url)[1:] for _ in range(40))
    assert set(counts) == {("a-decode", "A"), ("b-decode", "B")}
    assert min(counts.values()) >= 6  # 40 draws at 50/50: fewer than 6 on a side is < 1e-6
    # a strict header pins the revision; a stream's headers carry the stamp too
    assert {served(url, "B") for _ in range(8)} == {(200, "b-decode", "B")}
    assert served(url, "A", stream=True) == (200, "a-decode", "A")
    # kvgate epp behind Envoy: the same screen, and the stamp in the response-headers phase
    front = start_epp_behind_envoy(
        spawn, tmp_path, "--endpoints-file", str(endpoints), "--config-text", CONFIG
    ).url
    wait_until(lambda: served(front)[0] == 200, timeout_s=10, what="the EPP's endpoints")
    assert {served(front)[2] for _ in range(24)} == {"A", "B"}
    for stream in (False, True):
        assert served(front, "B", stream=stream) == (200, "", "B")
    endpoints.write_text(yaml.safe_dump([*old, new_decode]))  # B's prefill gone again
    wait_until(lambda: served(front, "B")[0] == 503, timeout_s=10, what="B uncovered")
