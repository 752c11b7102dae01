"""Rendered manifests run: each container's command line is started here as the kubelet would
start it, and every probe is requested as the kubelet would request it.

What stands in for the cluster, and the only rewrites made:

* the model server's ``vllm serve`` runs ``kvgate sim`` through a ``vllm`` shim on PATH, which
  passes on the flags the simulator models (LoRA, TLS and KV events among them) and names
  the rest (uvicorn options) on stderr; the real-vLLM variant is marked ``vllm``;
* the kubelet's ``$(VAR)`` expansion and downward API are done here (``POD_IP`` 127.0.0.1);
* port 8000 becomes a free port, and the EPP Service's DNS name 127.0.0.1 (one machine);
* a Secret volume is its files in a folder: the rendered TLS Secret's pair is written where
  the mount path points (the path rewritten to that folder);
* the EPP watches the rendered InferencePool in tests/support/fake_kube.py through a
  kubeconfig (in a cluster: the pod's service account).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvgate.config import load_llm_inference_service
from kvgate.k8s.render import render
from support.fake_kube import FakeKube
from support.procs import Proc, free_port

pytestmark = pytest.mark.slow

SERVICE = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata: {{name: smol, namespace: team-a}}
spec:
  replicas: 1
  model:
    uri: hf://HuggingFaceTB/SmolLM2-135M-Instruct
    name: smollm2
    lora:
      adapters:
      - {{name: sql-lora, uri: hf://org/sql-lora}}
  router:
    scheduler:
      template:
        containers:
        - name: main
          args:
          - --pool-name
          - '{{{{ ChildName .ObjectMeta.Name `-inference-pool` }}}}'
          - --grpc-port
          - '9002'
          - --grpc-health-port
          - '9003'
          - --secure-serving
          - --zap-encoder
          - json
          - --config-text
          - |
            apiVersion: inference.networking.x-k8s.io/v1alpha1
            kind: EndpointPickerConfig
            plugins:
            - type: precise-prefix-cache-scorer
              parameters:
                tokenProcessorConfig: {{blockSize: 16}}
                kvEventsConfig: {{zmqEndpoint: "tcp://*:{kv_port}"}}
            - type: queue-scorer
            schedulingProfiles:
            - name: default
              plugins:
              - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
              - {{pluginRef: queue-scorer, weight: 2}}
  template:
    containers:
    - name: main
      env:
      - {{name: VLLM_ADDITIONAL_ARGS, value: "--disable-uvicorn-access-log --max-model-len=2048"}}
"""

#: ``vllm serve MODEL ...`` -> ``kvgate sim --model MODEL ...`` with the flags it models.
SHIM = """\
import os, sys
from kvgate.engines.sim import SIM_FLAGS
keep_flags = SIM_FLAGS | {"--port", "--host", "--served-model-name", "--kv-events-config",
              "--enable-lora", "--ssl-certfile", "--ssl-keyfile", "--enable-ssl-refresh"}
assert sys.argv[1] == "serve", sys.argv
model, rest, keep, dropped, i = sys.argv[2], sys.argv[3:], [], [], 0
while i < len(rest):
    j = i + 1
    while j < len(rest) and not rest[j].startswith("--"):
        j += 1
    (keep if rest[i].split("=", 1)[0] in keep_flags else dropped).extend(rest[i:j])
    i = j
print("vllm shim: not modelled by kvgate sim:", " ".join(dropped), file=sys.stderr, flush=True)
os.execv(sys.executable, [sys.executable, "-m", "kvgate", "sim", "--model", model, *keep])
"""

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kubelet_expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion in command and args (unknown names stay)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def container_env(container: Mapping[str, Any], pod: Mapping[str, str]) -> dict[str, str]:
    """env with the downward API resolved (status.podIP, metadata.namespace/name)."""
    out: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            out[item["name"]] = str(item["value"])
        else:
            out[item["name"]] = pod[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def rewrite_port(manifests: list[dict[str, Any]], old: int, new: int) -> list[dict[str, Any]]:
    text = re.sub(rf"(?<![0-9]){old}(?![0-9])", str(new), json.dumps(manifests))
    loaded: list[dict[str, Any]] = json.loads(text)
    return loaded


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def probe_ok(probe: Mapping[str, Any]) -> bool:
    """One kubelet httpGet probe: any 200-399 answer; TLS is not verified, as the kubelet."""
    get = probe["httpGet"]
    url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{get['port']}{get['path']}"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return 200 <= int(resp.status) < 400
    except OSError:
        return False


async def eventually(check: Callable[[], Any], what: str, proc: Proc, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        assert proc.alive(), f"{what}: process exited\n{proc.log()[-3000:]}"
        try:
            if await check():
                return
        except (grpc.aio.AioRpcError, OSError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{proc.log()[-3000:]}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


def start_container(
    container: Mapping[str, Any], pod: Mapping[str, str], log: Path, *bin_dirs: Path
) -> Proc:
    """The container's command and args, expanded; PATH has ``kvgate`` (as in the image)."""
    env = container_env(container, pod)
    argv = [kubelet_expand(a, env) for a in [*container["command"], *container["args"]]]
    dirs = [*bin_dirs, Path(sys.executable).parent]
    env["PATH"] = os.pathsep.join([*map(str, dirs), os.environ["PATH"]])
    return Proc(argv, log, env=env)


async def test_rendered_model_server_and_epp_run_and_pass_their_probes(
    kube: FakeKube, tmp_path: Path
) -> None:
    kv_port, model_port = free_port(), free_port()
    source = tmp_path / "svc.yaml"
    source.write_text(SERVICE.format(kv_port=kv_port))
    manifests = rewrite_port(render(load_llm_inference_service(source)), 8000, model_port)
    # cluster DNS: the EPP Service's name is this machine
    manifests = json.loads(
        json.dumps(manifests).replace("smol-epp-service.team-a.svc.cluster.local", "127.0.0.1")
    )
    assert not by_kind(manifests, "Secret")  # nothing declares https: plain HTTP everywhere
    workload = next(
        d for d in by_kind(manifests, "Deployment") if d["metadata"]["name"] == "smol-kserve"
    )
    epp = next(d for d in by_kind(manifests, "Deployment") if d is not workload)
    (pool,) = by_kind(manifests, "InferencePool")
    model_pod = {"status.podIP": "127.0.0.1", "metadata.namespace": "team-a",
                 "metadata.name": "smol-kserve-0"}  # fmt: skip
    epp_pod = {**model_pod, "metadata.name": "smol-kserve-router-scheduler-0"}

    # the model server, through the vllm shim
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    (shim_dir / "vllm").write_text(f"#!{sys.executable}\n{SHIM}")
    (shim_dir / "vllm").chmod(0o755)
    main = workload["spec"]["template"]["spec"]["containers"][0]
    model = start_container(main, model_pod, tmp_path / "model.log", shim_dir)
    # the EPP: its rendered command and args, plus where to listen and the fake API server
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    container = json.loads(
        json.dumps(container)
        .replace('"9002"', f'"{grpc_port}"')
        .replace('"9003"', f'"{health_port}"')
    )
    container["args"] += ["--metrics-port", str(metrics_port), "--host", "127.0.0.1"]
    container["args"] += ["--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kc", "team-a"))]
    labels = pool["spec"]["selector"]["matchLabels"]
    kube.add_pool(pool["metadata"]["name"], labels, [model_port], namespace="team-a")
    kube.add_pod("smol-kserve-0", "127.0.0.1", labels, namespace="team-a", ready=True)
    epp_proc = start_container(container, epp_pod, tmp_path / "epp.log")
    try:
        for key in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = main[key]

            async def answered(probe: Mapping[str, Any] = probe) -> bool:
                return await asyncio.to_thread(probe_ok, probe)

            await eventually(answered, f"model server {key}", model, 60)
        dropped = model.log().split("not modelled by kvgate sim:", 1)[1].splitlines()[0]
        assert dropped.split() == ["--disable-uvicorn-access-log"]  # LoRA flags act

        # the EPP's gRPC probes, as the kubelet sends them
        health = grpc.aio.insecure_channel(f"127.0.0.1:{health_port}")
        check = health.unary_unary("/grpc.health.v1.Health/Check")
        for key in ("readinessProbe", "livenessProbe"):
            service = container[key]["grpc"]["service"].encode()
            request = b"\x0a" + bytes([len(service)]) + service

            async def serving(request: bytes = request) -> bool:
                return bool(await check(request, timeout=1) == b"\x08\x01")

            await eventually(serving, f"EPP {key} SERVING", epp_proc, 90)
        await health.close()

        # the scheme the EPP scrapes with is the one the model server serves
        args = container["args"]
        scheme = args[args.index("--model-server-metrics-scheme") + 1]
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{scheme}://127.0.0.1:{model_port}/metrics").read()
        )
        assert b"vllm:num_requests_waiting" in page

        async def epp_ready() -> bool:  # synced, and the pod's scrapes succeed
            url = f"http://127.0.0.1:{metrics_port}/healthz"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).status == 200)

        await eventually(epp_ready, "EPP /healthz", epp_proc, 30)

        # precise wiring: a completion on the model server reaches the EPP's index as events
        body = json.dumps({"model": "sql-lora", "prompt": "hello " * 40, "max_tokens": 2})
        request = urllib.request.Request(
            f"http://127.0.0.1:{model_port}/v1/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=30).read())

        async def events_arrived() -> bool:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
            match = re.search(r"^kvgate_kv_events_batches_applied_total (\S+)", text, re.M)
            return bool(match and float(match.group(1)) > 0)

        await eventually(events_arrived, "KV events in the EPP's index", epp_proc, 30)
    finally:
        epp_proc.stop()
        model.stop()


SEED = Path(__file__).resolve().parents[2] / "src/kvgate/data/examples/llm-inference-service.yaml"


async def test_https_seed_runs_as_rendered(kube: FakeKube, tmp_path: Path) -> None:
    """The course's LLMInferenceService exactly (HTTPS probes, https scraping): vLLM's TLS
    flags reach the simulator, its probes pass over HTTPS, and the EPP scrapes it over TLS."""
    import base64

    model_port = free_port()
    manifests = rewrite_port(render(load_llm_inference_service(SEED)), 8000, model_port)
    (secret,) = by_kind(manifests, "Secret")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name, data in secret["data"].items():
        (tls_dir / name).write_bytes(base64.b64decode(data))
    manifests = json.loads(json.dumps(manifests).replace("/var/run/kserve/tls", str(tls_dir)))
    workload = next(
        d for d in by_kind(manifests, "Deployment") if d["metadata"]["name"] == "qwen-model-kserve"
    )
    epp = next(d for d in by_kind(manifests, "Deployment") if d is not workload)
    (pool,) = by_kind(manifests, "InferencePool")
    ns = pool["metadata"]["namespace"]
    model_pod = {"status.podIP": "127.0.0.1", "metadata.namespace": ns,
                 "metadata.name": "qwen-model-kserve-0"}  # fmt: skip
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    (shim_dir / "vllm").write_text(f"#!{sys.executable}\n{SHIM}")
    (shim_dir / "vllm").chmod(0o755)
    main = workload["spec"]["template"]["spec"]["containers"][0]
    assert "--ssl-certfile" in main["args"][0] and "--enable-ssl-refresh" in main["args"][0]
    model = start_container(main, model_pod, tmp_path / "model.log", shim_dir)

    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    container = json.loads(
        json.dumps(container)
        .replace('"9002"', f'"{grpc_port}"')
        .replace('"9003"', f'"{health_port}"')
    )
    container["args"] += ["--metrics-port", str(metrics_port), "--host", "127.0.0.1"]
    container["args"] += ["--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kc", ns))]
    labels = pool["spec"]["selector"]
    kube.add_pool(
        pool["metadata"]["name"], labels, [model_port], namespace=ns,
        group="inference.networking.x-k8s.io",
    )  # fmt: skip
    kube.add_pod("qwen-model-kserve-0", "127.0.0.1", labels, namespace=ns, ready=True)
    epp_proc = start_container(container, {**model_pod, "metadata.name": "epp-0"}, tmp_path / "e")
    try:
        for key in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = main[key]
            assert probe["httpGet"]["scheme"] == "HTTPS"

            async def answered(probe: Mapping[str, Any] = probe) -> bool:
                return await asyncio.to_thread(probe_ok, probe)

            await eventually(answered, f"model server {key} over HTTPS", model, 60)
        dropped = model.log().split("not modelled by kvgate sim:", 1)[1].splitlines()[0]
        assert dropped.split() == ["--disable-uvicorn-access-log"]  # TLS flags act

        async def epp_ready() -> bool:  # synced, and its https scrapes of the pod succeed
            url = f"http://127.0.0.1:{metrics_port}/healthz"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).status == 200)

        await eventually(epp_ready, "EPP /healthz after https scrapes", epp_proc, 90)
        args = container["args"]
        assert args[args.index("--model-server-metrics-scheme") + 1] == "https"
    finally:
        epp_proc.stop()
        model.stop()
