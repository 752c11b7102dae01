"""``kvgate render`` of a P/D LLMInferenceService (``spec.prefill``): the prefill and decode
workloads validate, carry ``llm-d.ai/role`` and vLLM's ``--kv-transfer-config``, the decode
pods put ``kvgate sidecar`` before vLLM, the EPP runs KServe's P/D default; and the rendered
commands run: prefill vLLM, decode vLLM and the sidecar (vLLM through the simulator shim)
serve a request over both legs."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.test_render import validate
from kvgate.config import load_llm_inference_service
from kvgate.errors import ConfigError
from kvgate.k8s.render import render
from support.procs import Proc, free_port, wait_until

SERVICE = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata: {name: smol, namespace: team-a}
spec:
  replicas: 2
  model: {uri: hf://HuggingFaceTB/SmolLM2-135M-Instruct, name: smollm2}
  template:
    containers:
    - name: main
      env:
      - {name: VLLM_ADDITIONAL_ARGS, value: "--max-model-len=2048"}
  prefill:
    replicas: 1
    template:
      containers:
      - name: main
        env:
        - {name: VLLM_ADDITIONAL_ARGS, value: "--max-model-len=2048"}
"""

#: ``vllm serve MODEL ...`` -> ``kvgate sim --model MODEL ...`` with the flags it models.
SHIM = """\
import os, sys
from kvgate.engines.sim import SIM_FLAGS
keep_flags = SIM_FLAGS | {"--port", "--host", "--served-model-name", "--kv-transfer-config"}
assert sys.argv[1] == "serve", sys.argv
model, rest, keep, i = sys.argv[2], sys.argv[3:], [], 0
while i < len(rest):
    j = i + 1
    while j < len(rest) and not rest[j].startswith("--"):
        j += 1
    if rest[i].split("=", 1)[0] in keep_flags:
        keep.extend(rest[i:j])
    i = j
os.execv(sys.executable, [sys.executable, "-m", "kvgate", "sim", "--model", model, *keep])
"""

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pd_manifests(tmp_path: Path, extra: str = "") -> list[dict[str, Any]]:
    path = tmp_path / "svc.yaml"
    path.write_text(SERVICE + extra)
    return render(load_llm_inference_service(path))


def deployment(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == name)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_pd_workloads_validate_and_are_wired(tmp_path: Path) -> None:
    manifests = pd_manifests(tmp_path, "  kvCacheOffloading: {cpu: 10Gi}\n")
    for manifest in manifests:
        validate(manifest)
    decode, prefill = (
        deployment(manifests, "smol-kserve"),
        deployment(manifests, "smol-kserve-prefill"),
    )
    assert decode["spec"]["replicas"] == 2 and prefill["spec"]["replicas"] == 1
    pool = next(m for m in manifests if m["kind"] == "InferencePool")
    selector = pool["spec"]["selector"].get("matchLabels", pool["spec"]["selector"])
    for workload, role in ((decode, "decode"), (prefill, "prefill")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["llm-d.ai/role"] == role
        assert all(labels[k] == v for k, v in selector.items())  # the pool selects both
    # decode: vLLM on 8001 behind the routing sidecar on 8000 (the pool's target port)
    pod = decode["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["command"] == ["kvgate", "sidecar"]
    assert "--port=8000" in sidecar["args"] and "--model-server-port=8001" in sidecar["args"]
    assert "--kv-connector=nixlv2" in sidecar["args"]
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    (main,) = pod["containers"]
    script = main["args"][0]
    assert "--port 8001" in script and main["readinessProbe"]["httpGet"]["port"] == 8001
    kvt = json.loads(re.search(r"--kv-transfer-config '([^']+)'", script).group(1))  # type: ignore[union-attr]
    # spec.kvCacheOffloading: NIXL and vLLM's CPU tier under the MultiConnector
    nixl, offload = kvt["kv_connector_extra_config"]["connectors"]
    assert kvt["kv_connector"] == "MultiConnector"
    assert nixl == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    assert offload["kv_connector"] == "OffloadingConnector"
    assert offload["kv_connector_extra_config"]["cpu_bytes_to_use"] == 10 * 2**30
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "$(POD_IP)"
    # prefill: vLLM on 8000 with NIXL alone (no offloading on spec.prefill)
    (pmain,) = prefill["spec"]["template"]["spec"]["containers"]
    assert "--port 8000" in pmain["args"][0]
    assert (
        """--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'"""
        in (pmain["args"][0])
    )
    assert "initContainers" not in prefill["spec"]["template"]["spec"]
    # the EPP runs KServe's P/D default (the service names no scheduler config)
    epp = deployment(manifests, "smol-kserve-router-scheduler")
    config = yaml.safe_load(
        flag(epp["spec"]["template"]["spec"]["containers"][0]["args"], "--config-text")
    )
    assert {p["name"] for p in config["schedulingProfiles"]} == {"prefill", "decode"}


def expand(text: str, env: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def start(container: Mapping[str, Any], log: Path, bin_dir: Path) -> Proc:
    """The container's command as the kubelet starts it (env, $(VAR), downward API)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        value = "127.0.0.1" if "valueFrom" in item else expand(str(item["value"]), env)
        env[item["name"]] = value
    argv = [expand(a, env) for a in [*container["command"], *container["args"]]]
    env["PATH"] = os.pathsep.join(
        [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
    )
    return Proc(argv, log, env=env)


def ports(manifest: dict[str, Any], mapping: Mapping[int, int]) -> dict[str, Any]:
    text = json.dumps(manifest)
    for old, new in mapping.items():
        text = re.sub(rf"(?<![0-9]){old}(?![0-9])", str(new), text)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def test_rendered_pd_commands_run_both_legs(tmp_path: Path) -> None:
    manifests = pd_manifests(tmp_path)
    p_port, d_port, s_port = free_port(), free_port(), free_port()
    decode = ports(deployment(manifests, "smol-kserve"), {8001: d_port, 8000: s_port})
    prefill = ports(deployment(manifests, "smol-kserve-prefill"), {8000: p_port})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(f"#!{sys.executable}\n{SHIM}")
    (bin_dir / "vllm").chmod(0o755)
    dpod, ppod = decode["spec"]["template"]["spec"], prefill["spec"]["template"]["spec"]
    procs = [
        start(ppod["containers"][0], tmp_path / "prefill.log", bin_dir),
        start(dpod["containers"][0], tmp_path / "decode.log", bin_dir),
        start(dpod["initContainers"][0], tmp_path / "sidecar.log", bin_dir),
    ]
    try:
        for port, proc in zip((p_port, d_port, s_port), procs, strict=True):
            wait_until(lambda p=port: healthy(p), timeout_s=30, what=f"{proc.log()[-2000:]}")
        prompt = "The rendered sidecar runs the prefill leg, then the decode leg. " * 20
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 3}
        request = urllib.request.Request(
            f"http://127.0.0.1:{s_port}/v1/completions",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "x-prefiller-host-port": f"127.0.0.1:{p_port}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            usage = json.loads(resp.read())["usage"]
        # the decode vLLM pulled every prompt token but the last from the prefill vLLM
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    finally:
        for proc in procs:
            proc.stop()


def test_unknown_prefill_field_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(SERVICE + "    scaling: {minReplicas: 1}\n")
    with pytest.raises(
        ConfigError, match=r"spec\.prefill\.scaling: autoscaling .* is not rendered"
    ):
        render(load_llm_inference_service(path))
