"""mock-metrics-source: a real ``kvgate epp`` serves the endpoint metrics its parameters give
(the model servers' own /metrics pages are not read) and schedules on them."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.epp_rig import BASE, body_msg, headers_msg, model_server, set_headers
from kvgate.endpoints.static import spec_from_url
from kvgate.errors import PluginParameterError
from kvgate.extproc.app import EppOptions, EppServer
from plugins.kit import make
from support.procs import free_port

CONFIG = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: mock-metrics-source
  parameters:
    metrics:
      "%s": {waitingQueueSize: 40, kvCacheUsagePercent: 0.9, activeModels: [lora-a]}
      "%s": {waitingQueueSize: 0, kvCacheUsagePercent: 0.1}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
dataLayer:
  sources:
  - pluginRef: mock-metrics-source
"""


async def test_the_epp_schedules_on_the_metrics_of_the_parameters() -> None:
    servers = [await model_server() for _ in range(2)]
    busy, idle = (hp for _, hp in servers)
    opts = EppOptions(
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        endpoints=[spec_from_url(busy), spec_from_url(idle)],
        config_text=CONFIG % (busy, idle),
    )
    server = EppServer(opts)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{opts.grpc_port}")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while server.pool.get(busy).metrics.waiting_queue_size != 40:  # type: ignore[union-attr]
            assert loop.time() < deadline, "mock metrics never served"
            await asyncio.sleep(0.02)
        metrics = server.pool.get(busy).metrics  # type: ignore[union-attr]
        assert metrics.active_models == frozenset({"lora-a"}) and metrics.updated_at > 0
        while len(server.pool.candidates()) < 2:
            assert loop.time() < deadline, "endpoints never entered rotation"
            await asyncio.sleep(0.02)
        call = ep_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg(BASE))
        await call.write(body_msg(b'{"model": "m", "prompt": "hi"}'))
        reply = await asyncio.wait_for(call.read(), 5)
        assert set_headers(reply)["x-gateway-destination-endpoint"] == idle
        await call.done_writing()
    finally:
        await channel.close()
        await server.stop()
        for runner, _ in servers:
            await runner.cleanup()


def test_parameters_are_checked() -> None:
    with pytest.raises(PluginParameterError, match="fraction"):
        make("mock-metrics-source", {"metrics": {"a:1": {"kvCacheUsagePercent": 90}}})
    with pytest.raises(PluginParameterError, match="unknown metric field"):
        make("mock-metrics-source", {"metrics": {"a:1": {"queue": 1}}})
