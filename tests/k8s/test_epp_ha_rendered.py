"""A rendered two-replica scheduler runs as rendered: two real ``kvgate epp`` processes
started with the EPP Deployment's own args against the fake Kubernetes API, asked the
rendered gRPC probes as the kubelet asks them, and every API request they made checked
against the rendered Role.

* ``spec.router.scheduler.replicas: 2`` renders ``--ha-enable-leader-election``, GIE's
  ``liveness`` / ``readiness`` probe services and the Lease verbs in the Role;
* the leader answers SERVING to both probes; the standby is live (SERVING to ``liveness``,
  so it is not restarted) but not ready (NOT_SERVING to ``readiness``: no traffic);
* each request the two EPPs sent (pods, the InferencePool, InferenceObjectives in both
  groups, the Lease) is a verb the Role grants (a cluster would answer 403 otherwise).

The only rewrites: ports 9002/9003 become free ports, the metrics port and bind address
are added, and the kubeconfig stands in for the pod's service account.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from kvgate.config import load_llm_inference_service
from kvgate.k8s.lease import lease_name
from kvgate.k8s.render import render
from support.fake_kube import FakeKube
from support.metrics_server import start_metrics_server
from support.procs import Proc, free_port

METRICS = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"

SERVICE = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata: {name: ha, namespace: team-a}
spec:
  model: {uri: hf://HuggingFaceTB/SmolLM2-135M-Instruct, name: smollm2}
  router:
    scheduler:
      replicas: 2
      template:
        containers:
        - name: main
          args: [--grpc-port, '9002', --grpc-health-port, '9003', --secure-serving=false,
                 --no-request-log]
"""


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


class Epp:
    """One replica of the rendered EPP Deployment, probed on its gRPC health port."""

    def __init__(self, container: dict[str, Any], kubeconfig: Path, log: Path) -> None:
        self.health_port = free_port()
        text = json.dumps(container["args"])
        args = json.loads(
            text.replace('"9002"', f'"{free_port()}"').replace('"9003"', f'"{self.health_port}"')
        )
        args += ["--metrics-port", str(free_port()), "--host", "127.0.0.1"]
        args += ["--kubeconfig", str(kubeconfig)]
        env = {"NAMESPACE": "team-a", "POD_NAME": log.stem}  # the downward API's values
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        self.proc = Proc([*container["command"], *args], log, env=env)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}")
        self.check = self.channel.unary_unary("/grpc.health.v1.Health/Check")

    async def probe(self, probe: dict[str, Any]) -> bytes | None:
        """A kubelet gRPC probe: the answer, None while the port is not up yet."""
        assert self.proc.alive(), self.proc.log()[-3000:]
        service = probe["grpc"]["service"].encode()
        try:
            return bytes(await self.check(b"\x0a" + bytes([len(service)]) + service, timeout=1))
        except grpc.aio.AioRpcError:
            return None

    async def close(self) -> None:
        await self.channel.close()
        await asyncio.to_thread(self.proc.stop)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


def verb_of(request: str) -> tuple[str, str, str] | None:
    """(API group, resource, RBAC verb) of one fake-API request; None for API discovery."""
    method, target = request.split(" ", 1)
    url = urlsplit(target)
    parts = url.path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/namespaces/NS/RESOURCE[/NAME]
        group, rest = "", parts[2:]
    else:  # /apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME]
        group, rest = parts[1], parts[3:]
    if not rest:
        return None  # GET /apis/GROUP/VERSION: discovery, open to every authenticated user
    assert rest[0] == "namespaces", request
    resource, named = rest[2], len(rest) > 3
    if method == "POST":
        return group, resource, "create"
    if method == "PUT":
        return group, resource, "update"
    if named:
        return group, resource, "get"
    watch = parse_qs(url.query).get("watch") in (["true"], ["1"])
    return group, resource, "watch" if watch else "list"


async def test_rendered_ha_scheduler_probes_and_rbac(kube: FakeKube, tmp_path: Path) -> None:
    source = tmp_path / "svc.yaml"
    source.write_text(SERVICE)
    manifests = render(load_llm_inference_service(source))
    epp = next(m for m in manifests if m["metadata"]["name"] == "ha-kserve-router-scheduler")
    (role,) = [m for m in manifests if m["kind"] == "Role"]
    (pool,) = [m for m in manifests if m["kind"] == "InferencePool"]
    assert epp["spec"]["replicas"] == 2
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    assert "--ha-enable-leader-election" in container["args"]
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]

    model_port = free_port()
    runner, _ = await start_metrics_server("127.0.0.1", model_port, page=METRICS)
    labels = pool["spec"]["selector"]["matchLabels"]
    kube.add_pool(pool["metadata"]["name"], labels, [model_port], namespace="team-a")
    kube.add_pod("ha-kserve-0", "127.0.0.1", labels, namespace="team-a", ready=True)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", "team-a")
    a = Epp(container, kubeconfig, tmp_path / "epp-a.log")
    b = Epp(container, kubeconfig, tmp_path / "epp-b.log")
    try:

        async def one_ready() -> bool:
            return {await a.probe(readiness), await b.probe(readiness)} == {SERVING, NOT_SERVING}

        # start-up imports are slow on a busy 2-core machine
        await until(one_ready, "one replica ready, the other not", timeout_s=90)
        leader, standby = (a, b) if await a.probe(readiness) == SERVING else (b, a)
        assert await leader.probe(liveness) == SERVING
        assert await standby.probe(liveness) == SERVING  # live: the kubelet leaves it running
        assert await standby.probe(readiness) == NOT_SERVING  # not ready: no traffic
        assert kube.lease(lease_name("team-a", pool["metadata"]["name"]), "team-a") is not None

        granted = {
            (g, r, v)
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        used = {v for v in map(verb_of, kube.requests) if v is not None}
        assert used - granted == set(), kube.requests
        resources = {r for _, r, _ in used}
        assert resources == {"pods", "inferencepools", "inferenceobjectives", "leases"}
        assert ("llm-d.ai", "inferenceobjectives", "watch") in used
    finally:
        await a.close()
        await b.close()
        await runner.cleanup()
