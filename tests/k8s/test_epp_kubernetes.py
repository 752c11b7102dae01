"""``kvgate epp`` started with the seed LLMInferenceService's own scheduler args, against a
fake Kubernetes API: it finds the InferencePool's pods, scrapes them over https, serves
ext_proc over TLS and follows pods as they come and go."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession, web
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from kvgate.config import load_llm_inference_service
from kvgate.extproc.tls import self_signed
from kvgate.k8s.render import epp_args, workload_labels
from support.fake_kube import FakeKube
from support.metrics_server import start_metrics_server
from support.procs import Proc, free_port, kvgate_cmd

pytestmark = pytest.mark.slow

SEED = Path(str(resources.files("kvgate") / "data" / "examples" / "llm-inference-service.yaml"))
METRICS = (Path(__file__).parent.parent / "data" / "vllm-cpu-metrics.txt").read_text()


async def https_model_server(host: str, port: int, tmp: Path) -> web.AppRunner:
    cert, key = self_signed()
    (tmp / "ms.crt").write_bytes(cert)
    (tmp / "ms.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "ms.crt", tmp / "ms.key")
    runner, _ = await start_metrics_server(host, port, page=METRICS, ssl_context=ctx)
    return runner


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            if await check():  # type: ignore[misc]
                return
        except (grpc.aio.AioRpcError, AssertionError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


async def test_seed_args_drive_discovery_tls_and_routing(kube: FakeKube, tmp_path: Path) -> None:
    svc = load_llm_inference_service(SEED)
    ns = svc.namespace
    labels = workload_labels(svc)
    model_port = free_port()
    runners = [
        await https_model_server(ip, model_port, tmp_path) for ip in ("127.0.0.1", "127.0.0.2")
    ]
    kube.add_pool(
        svc.inference_pool_name,
        labels,
        [model_port],
        namespace=ns,
        group="inference.networking.x-k8s.io",
    )
    kube.add_pod("qwen-model-kserve-a", "127.0.0.1", labels, namespace=ns, ready=True)
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    args = epp_args(svc)  # exactly what `kvgate render` puts in the EPP Deployment
    assert "--secure-serving" in args and "--zap-encoder" in args
    args = replace_flag(args, "--grpc-port", str(grpc_port))
    args = replace_flag(args, "--grpc-health-port", str(health_port))
    args += ["--metrics-port", str(metrics_port), "--host", "127.0.0.1"]
    args += ["--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kubeconfig", ns))]
    proc = Proc(kvgate_cmd("epp", *args), tmp_path / "epp.log")
    health = grpc.aio.insecure_channel(f"127.0.0.1:{health_port}")
    try:
        check = health.unary_unary("/grpc.health.v1.Health/Check")

        async def serving() -> bool:
            assert proc.alive(), proc.log()[-3000:]
            return bool(await check(b"", timeout=1) == b"\x08\x01")

        await eventually(
            serving, "health SERVING", timeout_s=90
        )  # start-up imports are slow on a busy 2-core machine
        # the seed's JSON logging: one JSON object per line
        first = next(line for line in proc.log().splitlines() if line.startswith("{"))
        assert json.loads(first)["level"] in ("info", "warning")

        async def destination() -> str:
            call = ep_grpc.ExternalProcessorStub(insecure_tls).Process()
            await call.write(
                ep.ProcessingRequest(
                    request_headers=ep.HttpHeaders(
                        headers=core.HeaderMap(
                            headers=[
                                core.HeaderValue(key=":method", raw_value=b"GET"),
                                core.HeaderValue(key=":path", raw_value=b"/v1/models"),
                            ]
                        ),
                        end_of_stream=True,
                    )
                )
            )
            reply = await asyncio.wait_for(call.read(), 5)
            if reply.WhichOneof("response") != "request_headers":
                return ""
            for h in reply.request_headers.response.header_mutation.set_headers:
                if h.header.key == "x-gateway-destination-endpoint":
                    return str(h.header.raw_value.decode())
            return ""

        # TLS with the EPP's self-signed certificate, trusted as presented (Envoy's GIE
        # cluster does not verify it either)
        pem = ssl.get_server_certificate(("127.0.0.1", grpc_port)).encode()
        insecure_tls = grpc.aio.secure_channel(
            f"127.0.0.1:{grpc_port}",
            grpc.ssl_channel_credentials(root_certificates=pem),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        seen: set[str] = set()

        async def routed_to(target: str) -> bool:
            dest = await destination()
            seen.add(dest)
            return dest == target

        # pod a is ready and scraped over https -> it is the only destination
        await eventually(lambda: routed_to(f"127.0.0.1:{model_port}"), "pod a in rotation")
        # a second pod turns up ready -> both get traffic eventually
        kube.add_pod("qwen-model-kserve-b", "127.0.0.2", labels, namespace=ns, ready=True)
        await eventually(lambda: routed_to(f"127.0.0.2:{model_port}"), "pod b in rotation")
        # pod a terminates -> only b remains
        kube.terminate("qwen-model-kserve-a", namespace=ns)
        seen.clear()

        async def only_b() -> bool:
            results = {await destination() for _ in range(6)}
            return results == {f"127.0.0.2:{model_port}"}

        await eventually(only_b, "pod a out of rotation")
        # plain-text clients are refused: --secure-serving is on
        with pytest.raises(grpc.aio.AioRpcError):
            plain = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
            try:
                call = ep_grpc.ExternalProcessorStub(plain).Process()
                await call.write(ep.ProcessingRequest())
                await asyncio.wait_for(call.read(), 3)
            finally:
                await plain.close()
        await insecure_tls.close()
    finally:
        await health.close()
        proc.stop()
        for runner in runners:
            await runner.cleanup()


FLOW_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""


async def test_inference_objective_priority_from_the_api_server(
    kube: FakeKube, tmp_path: Path
) -> None:
    """An InferenceObjective in the pool's namespace sets the priority of requests naming it
    (flow control counts them in that band; another pool's objective counts as 0), and a
    change of spec.priority is followed through the watch."""
    from extproc.epp_rig import BASE, body_msg, headers_msg

    ns, pool = "llm", "qwen-pool"
    labels = {"app": "qwen"}
    runner, model = await start_metrics_server(page=METRICS)
    kube.add_pool(pool, labels, [int(model.rsplit(":", 1)[1])], namespace=ns)
    kube.add_pod("qwen-a", "127.0.0.1", labels, namespace=ns, ready=True)
    kube.add_objective("interactive", pool, 7, namespace=ns)
    kube.add_objective("other", "another-pool", 9, namespace=ns)
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    args = ["--pool-name", pool, "--pool-namespace", ns, "--zap-encoder", "json"]
    args += ["--config-text", FLOW_CONFIG, "--host", "127.0.0.1", "--secure-serving=false"]
    args += ["--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port)]
    args += ["--metrics-port", str(metrics_port)]
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    args += ["--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kubeconfig", ns))]
    proc = Proc(kvgate_cmd("epp", *args), tmp_path / "epp.log")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = grpc.aio.insecure_channel(f"127.0.0.1:{health_port}")
    try:
        check = health.unary_unary("/grpc.health.v1.Health/Check")

        async def serving() -> bool:
            assert proc.alive(), proc.log()[-3000:]
            return bool(await check(b"", timeout=1) == b"\x08\x01")

        await eventually(serving, "health SERVING", timeout_s=90)  # slow imports, busy CPU
        stub = ep_grpc.ExternalProcessorStub(channel)

        async def one_request(objective: str) -> None:
            call = stub.Process()
            headers = {**BASE, "x-gateway-inference-objective": objective}
            body = json.dumps({"model": "m", "prompt": "hello"}).encode()
            for msg in (headers_msg(headers), body_msg(body)):
                await call.write(msg)
            for _ in range(2):  # the routing reply: headers, then the body
                await asyncio.wait_for(call.read(), 5)
            await call.write(
                ep.ProcessingRequest(
                    response_headers=ep.HttpHeaders(
                        headers=core.HeaderMap(
                            headers=[core.HeaderValue(key=":status", raw_value=b"200")]
                        ),
                        end_of_stream=True,
                    )
                )
            )
            await asyncio.wait_for(call.read(), 5)
            await call.done_writing()

        async def dispatched(priority: int) -> float:
            async with ClientSession() as http, http.get(metrics_url) as resp:
                page = await resp.text()
            wanted = (
                "inference_extension_flow_control_requests_total{"
                f'inference_pool="{pool}",outcome="Dispatched",priority="{priority}"}}'
            )
            lines = [line for line in page.splitlines() if line.startswith(wanted)]
            return float(lines[0].split()[-1]) if lines else 0.0

        await one_request("interactive")
        await one_request("other")  # another pool's objective: priority 0
        assert await dispatched(7) == 1
        assert await dispatched(0) == 1

        # the watcher said what it found, in the EPP's JSON log
        found = [json.loads(x)["msg"] for x in proc.log().splitlines() if x.startswith("{")]
        assert f"InferenceObjectives (llm-d.ai/v1alpha2) for pool {pool}: 1 at " in " ".join(found)

        kube.update_objective("interactive", namespace=ns, priority=3)

        async def changed() -> bool:
            await one_request("interactive")
            return await dispatched(3) >= 1

        await eventually(changed, "spec.priority change followed", timeout_s=5)
    finally:
        await channel.close()
        await health.close()
        proc.stop()
        await runner.cleanup()
