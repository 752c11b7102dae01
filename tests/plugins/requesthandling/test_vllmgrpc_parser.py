"""vllmgrpc-parser end to end: a gRPC client calls vLLM's Generate through a real Envoy, whose
ext_proc hands the protobuf body to a real ``kvgate epp`` process; the EPP schedules it on its
prompt (repeats follow the prefix cache), Envoy forwards it to the picked stand-in vLLM gRPC
server, and the EPP reads the usage from the GenerateResponse. The stand-ins speak gRPC only,
so the EPP probes their health with ``VllmEngine/HealthCheck``. Paths no listed parser claims
are refused; ``kvgate serve`` refuses the parser at start-up in one line."""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvgate.errors import BadRequestError
from kvgate.extproc import envoyconfig
from kvgate.plugins.requesthandling.grpc_wire import frame, vllm
from plugins.kit import make
from requestcontrol.test_control import make_control
from support.procs import Proc, free_port, kvgate_cmd

pytestmark = pytest.mark.envoy

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "envoy" / "envoy.yaml"
CONFIG = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
- name: vllmgrpcParser
  type: vllmgrpc-parser
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
requestHandler:
  parsers:
  - pluginRef: vllmgrpcParser
dataLayer:
  injectDefaults: false  # a gRPC-only server has no /metrics on its port
"""
ENGINE = "/vllm.grpc.engine.VllmEngine/"
GENERATE = ENGINE + "Generate"
EMBED = ENGINE + "Embed"


async def _vllm_stand_in(served: list[str]) -> tuple[grpc.aio.Server, str]:
    """A gRPC server answering Generate (one GenerateComplete with usage) and HealthCheck."""
    api = vllm()

    async def generate(raw: bytes, context: Any) -> AsyncIterator[bytes]:
        request = api.GenerateRequest.FromString(raw)
        served.append(request.request_id)
        done = api.GenerateComplete(
            output_ids=[1, 2], finish_reason="stop", prompt_tokens=321, completion_tokens=2
        )
        yield api.GenerateResponse(complete=done).SerializeToString()

    async def health(raw: bytes, context: Any) -> bytes:
        return api.HealthCheckResponse(healthy=True).SerializeToString()

    identity = {"request_deserializer": None, "response_serializer": None}
    handler = grpc.method_handlers_generic_handler(
        "vllm.grpc.engine.VllmEngine",
        {
            "Generate": grpc.unary_stream_rpc_method_handler(generate, **identity),
            "HealthCheck": grpc.unary_unary_rpc_method_handler(health, **identity),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _envoy(tmp: Path, epp_port: int) -> tuple[Proc, int]:
    """The shipped Envoy example, its model-server cluster speaking HTTP/2 (gRPC) upstream."""
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=epp_port)
    cfg = envoyconfig.adapt(EXAMPLE, ports, access_log=tmp / "access.log")
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == "original_destination":
            cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                    "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
    proc = Proc(envoyconfig.command(envoyconfig.write(cfg, tmp / "envoy.yaml")), tmp / "envoy.log")
    proc.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    return proc, ports.listen


async def test_generate_through_envoy_is_scheduled_on_its_prompt(tmp_path: Path) -> None:
    served: dict[str, list[str]] = {}
    servers = []
    for _ in range(2):
        log: list[str] = []
        server, hostport = await _vllm_stand_in(log)
        servers.append(server)
        served[hostport] = log
    epp_port, metrics_port = free_port(), free_port()
    epp = Proc(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(epp_port),
            "--grpc-health-port", str(free_port()), "--metrics-port", str(metrics_port),
            *(arg for hp in served for arg in ("--endpoint", hp)),
            "--config-text", CONFIG, "--refresh-metrics-interval", "50ms",
        ),
        tmp_path / "epp.log",
    )  # fmt: skip
    envoy: Proc | None = None
    try:
        # /healthz answers 200 once endpoints are in rotation: here, by gRPC HealthCheck
        await asyncio.to_thread(epp.wait_http, f"http://127.0.0.1:{metrics_port}/healthz", 60)
        envoy, listen = await asyncio.to_thread(_envoy, tmp_path, epp_port)
        api = vllm()
        prompt = "You are a careful assistant for the kvgate project. " * 40
        async with grpc.aio.insecure_channel(f"127.0.0.1:{listen}") as channel:
            generate = channel.unary_stream(
                GENERATE,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=api.GenerateResponse.FromString,
            )
            for i in range(6):
                request = api.GenerateRequest(request_id=f"r{i}", text=prompt + str(i))
                replies = [r async for r in generate(request, timeout=10)]
                assert replies[-1].complete.finish_reason == "stop"
        homes = {hp for hp, ids in served.items() if ids}
        assert len(homes) == 1 and len(served[homes.pop()]) == 6  # the shared prefix held them
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        usage = re.search(r"^inference_objective_input_tokens_sum\{[^}]*\} (\S+)$", page, re.M)
        assert usage is not None and float(usage.group(1)) == 6 * 321.0  # read from the answer
    finally:
        if envoy is not None:
            envoy.stop()
        epp.stop()
        for server in servers:
            await server.stop(None)


def test_requests_are_read_as_llm_d_reads_them() -> None:
    parser = make("vllmgrpc-parser")
    api = vllm()
    text = api.GenerateRequest(text="hello", stream=True)
    read = parser.parse_request(GENERATE, frame(text.SerializeToString()))
    assert (read.prompt, read.token_ids, read.stream) == ("hello", None, True)
    tokens = api.GenerateRequest(tokenized=api.TokenizedInput(input_ids=[5, 6, 7]))
    read = parser.parse_request(GENERATE, frame(tokens.SerializeToString()))
    assert (read.token_ids, read.prompt, read.stream) == ((5, 6, 7), None, False)
    embed = api.EmbedRequest(tokenized=api.TokenizedInput(input_ids=[1]))
    assert parser.parse_request(EMBED, frame(embed.SerializeToString())).token_ids == (1,)
    with pytest.raises(BadRequestError, match="compressed"):
        parser.parse_request(GENERATE, b"\x01" + frame(b"")[1:])
    with pytest.raises(BadRequestError, match="neither text nor tokenized"):
        parser.parse_request(GENERATE, frame(b""))
    reply = api.EmbedResponse(embedding=[0.5], prompt_tokens=4).SerializeToString()
    assert parser.response_usage(frame(reply)).prompt_tokens == 4
    assert parser.healthy(api.HealthCheckResponse(healthy=True).SerializeToString())
    assert not parser.healthy(b"")


def test_unclaimed_paths_are_refused_and_kvgate_serve_refuses_the_parser() -> None:
    control = make_control(CONFIG)
    assert control.claims("/v1/completions")  # no openai-parser: nothing reads it as JSON
    ctx = control.begin("epp", "/v1/completions")
    with pytest.raises(BadRequestError, match="no configured request parser claims path"):
        control.parse(ctx, "completions", b'{"model": "m", "prompt": "x"}', {})
    done = subprocess.run(
        kvgate_cmd("serve", "--endpoint", "http://127.0.0.1:9", "--config-text", CONFIG),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        "error: requestHandler.parsers: 'vllmgrpcParser' (vllmgrpc-parser) parses gRPC (h2c) "
        "requests, which kvgate serve cannot receive (it speaks HTTP/1.1 with JSON bodies); "
        "run kvgate epp behind Envoy for it"
    )
