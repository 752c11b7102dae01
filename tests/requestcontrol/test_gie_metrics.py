"""Every series the current EPP exports, scraped from a real ``kvgate epp`` process with a real
``kvgate sim`` behind it; the test plays Envoy (raw ext_proc messages) and forwards each
request to the replica the EPP picked, as Envoy would.

Names from llm-d/llm-d-router commit ebab687927f5331c1b39defcb579a07951bce56c (the EPP that
GIE's pkg/epp became): pkg/epp/metrics/metrics.go, pkg/epp/metrics/llm_d_router_metrics.go and
pkg/epp/metrics/collectors/inference_pool.go. Series kvgate does not export are listed in
NOT_EXPORTED with the reason (docs/extproc.md has the same table).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable

import grpc
from aiohttp import ClientSession
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.epp_rig import BASE, body_msg, headers_msg, set_headers
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

#: name -> Prometheus type, as llm-d-router registers them (metrics.go's Register()).
GIE_SERIES = {
    # per request: GIE's deprecated names ...
    "inference_objective_request_total": "counter",
    "inference_objective_request_error_total": "counter",
    "inference_objective_request_duration_seconds": "histogram",
    "inference_objective_request_sizes": "histogram",
    "inference_objective_input_tokens": "histogram",
    "inference_objective_output_tokens": "histogram",
    "inference_objective_prompt_cached_tokens": "histogram",
    "inference_objective_running_requests": "gauge",
    "inference_objective_normalized_time_per_output_token_seconds": "histogram",
    # ... and llm-d's
    "llm_d_epp_request_total": "counter",
    "llm_d_epp_request_error_total": "counter",
    "llm_d_epp_request_duration_seconds": "histogram",
    "llm_d_epp_request_size_bytes": "histogram",
    "llm_d_epp_request_input_tokens": "histogram",
    "llm_d_epp_request_output_tokens": "histogram",
    "llm_d_epp_request_cached_tokens": "histogram",
    "llm_d_epp_request_running": "gauge",
    "llm_d_epp_request_ntpot_seconds": "histogram",
    "llm_d_epp_request_ttft_seconds": "histogram",
    "llm_d_epp_request_streaming_tpot_seconds": "histogram",
    "llm_d_epp_request_processing_duration_seconds": "histogram",
    # pool
    "inference_pool_average_kv_cache_utilization": "gauge",
    "inference_pool_average_queue_size": "gauge",
    "inference_pool_average_running_requests": "gauge",
    "inference_pool_ready_pods": "gauge",
    "inference_pool_per_pod_queue_size": "gauge",
    "llm_d_epp_average_kv_cache_utilization": "gauge",
    "llm_d_epp_average_queue_size": "gauge",
    "llm_d_epp_average_running_requests": "gauge",
    "llm_d_epp_std_dev_kv_cache_utilization": "gauge",
    "llm_d_epp_std_dev_queue_size": "gauge",
    "llm_d_epp_std_dev_running_requests": "gauge",
    "llm_d_epp_ready_endpoints": "gauge",
    "llm_d_epp_per_endpoint_queue_size": "gauge",
    # scheduler, plugins, build
    "inference_extension_scheduler_e2e_duration_seconds": "histogram",
    "inference_extension_scheduler_attempts_total": "counter",
    "inference_extension_plugin_duration_seconds": "histogram",
    "inference_extension_info": "gauge",
    "llm_d_epp_scheduler_e2e_duration_seconds": "histogram",
    "llm_d_epp_scheduler_attempts_total": "counter",
    "llm_d_epp_plugin_duration_seconds": "histogram",
    "llm_d_epp_info": "gauge",
    # flow control (with the flowControl feature gate)
    "inference_extension_flow_control_request_queue_duration_seconds": "histogram",
    "inference_extension_flow_control_queue_size": "gauge",
    "inference_extension_flow_control_queue_bytes": "gauge",
    "inference_extension_flow_control_pool_saturation": "gauge",
    "llm_d_epp_flow_control_request_queue_duration_seconds": "histogram",
    "llm_d_epp_flow_control_queue_size": "gauge",
    "llm_d_epp_flow_control_queue_bytes": "gauge",
    "llm_d_epp_flow_control_pool_saturation": "gauge",
    "llm_d_epp_flow_control_requests_total": "counter",
}

#: Registered by the EPP but not exported by kvgate, and why (docs/extproc.md).
NOT_EXPORTED = {
    "inference_objective_response_sizes": "needs per-chunk byte counts from the front doors",
    "llm_d_epp_response_size_bytes": "needs per-chunk byte counts from the front doors",
    "llm_d_epp_request_streaming_itl_seconds": "needs per-chunk times from the front doors",
    "llm_d_epp_response_processing_duration_seconds": "needs per-chunk handler times",
    "llm_d_epp_plugin_data_scope_violations_total": "kvgate's data layer has no scopes",
    "inference_extension_flow_control_dispatch_cycle_duration_seconds": "flow control's",
    "inference_extension_flow_control_request_enqueue_duration_seconds": "flow control's",
    "inference_extension_model_rewrite_decisions_total": "no InferenceModelRewrite",
    "llm_d_inference_scheduler_datalayer_poll_errors_total": "the scraper's",
    "inference_extension_prefix_indexer_size": "the approx-prefix-cache-producer's",
}

#: Series with no sample until a request waits in a flow-control queue (as in llm-d).
ONLY_WHEN_QUEUED = {
    "inference_extension_flow_control_queue_size",
    "inference_extension_flow_control_queue_bytes",
    "llm_d_epp_flow_control_queue_size",
    "llm_d_epp_flow_control_queue_bytes",
}

CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def has_samples(text: str, name: str) -> bool:
    suffix = {"counter": "_total", "histogram": "_count"}
    kind = families(text)[name]
    sample = name if kind == "gauge" or name.endswith("_total") else name + suffix[kind]
    return re.search(rf"^{re.escape(sample)}(\{{[^}}]*\}})? \S+$", text, re.M) is not None


def response_headers(content_type: bytes) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(
        response_headers=ep.HttpHeaders(
            headers=core.HeaderMap(
                headers=[
                    core.HeaderValue(key=":status", raw_value=b"200"),
                    core.HeaderValue(key="content-type", raw_value=content_type),
                ]
            )
        )
    )


async def play_envoy(stub: ep_grpc.ExternalProcessorStub, body: dict[str, object]) -> None:
    """One request as Envoy passes it: to the EPP, to the picked replica, the answer back."""
    raw = json.dumps(body).encode()
    call = stub.Process()
    headers = {**BASE, "x-gateway-inference-fairness-id": "tenant-a"}
    await call.write(headers_msg(headers))
    await call.write(body_msg(raw))
    first = await asyncio.wait_for(call.read(), 10)
    destination = set_headers(first)["x-gateway-destination-endpoint"]
    await asyncio.wait_for(call.read(), 10)  # the body, passed on
    stream = body.get("stream") is True
    async with (
        ClientSession() as client,
        client.post(
            f"http://{destination}/v1/completions",
            data=raw,
            headers={"content-type": "application/json"},
        ) as r,
    ):
        assert r.status == 200
        await call.write(response_headers(r.headers["content-type"].encode()))
        if stream:  # event streams are echoed chunk by chunk
            await asyncio.wait_for(call.read(), 10)
        chunks = [chunk async for chunk in r.content.iter_any()]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        await call.write(
            ep.ProcessingRequest(response_body=ep.HttpBody(body=chunk, end_of_stream=last))
        )
        if stream:
            await asyncio.wait_for(call.read(), 10)
    if not stream:  # a JSON answer is held, then headers and body go out together
        await asyncio.wait_for(call.read(), 10)
        await asyncio.wait_for(call.read(), 10)
    await call.done_writing()


def start_epp(spawn: Callable[..., Proc], endpoint: str) -> tuple[int, str]:
    port, health, metrics = free_port(), free_port(), free_port()
    spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(port),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoint", endpoint, "--config-text", CONFIG, "--no-request-log",
        ),
        name="epp",
    ).wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=60)  # fmt: skip
    return port, f"http://127.0.0.1:{metrics}/metrics"


async def test_epp_exports_every_gie_series(spawn: Callable[..., Proc]) -> None:
    sim = start_sim(spawn, "--speed", "50", model="m")
    port, metrics_url = start_epp(spawn, f"127.0.0.1:{sim.port}")
    ready = re.compile(r"^inference_pool_ready_pods\{[^}]*\} 1\.0$", re.M)
    wait_until(lambda: ready.search(scrape(metrics_url)) is not None, timeout_s=20)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ep_grpc.ExternalProcessorStub(channel)
        prompt = "the same long prefix for every request " * 8
        for stream in (True, False, True):
            await play_envoy(
                stub,
                {
                    "model": "m",
                    "prompt": prompt,
                    "max_tokens": 4,
                    "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {}),
                },
            )
        # a body that is not JSON: 400 from the EPP, counted as an error
        call = stub.Process()
        await call.write(headers_msg(BASE))
        await call.write(body_msg(b"{not json"))
        reply = await asyncio.wait_for(call.read(), 10)
        assert reply.immediate_response.status.code == 400
        await call.done_writing()
    finally:
        await channel.close()
    text = scrape(metrics_url)
    exported = families(text)
    missing = [n for n in GIE_SERIES if n not in exported]
    assert not missing, f"not exported: {missing}"
    wrong = {n: exported[n] for n, kind in GIE_SERIES.items() if exported[n] != kind}
    assert not wrong, f"wrong types: {wrong}"
    quiet = [n for n in GIE_SERIES if n not in ONLY_WHEN_QUEUED and not has_samples(text, n)]
    assert not quiet, f"no samples: {quiet}"
    assert not [n for n in NOT_EXPORTED if n in exported]
    # the labels llm-d puts on them, with values from these requests
    assert re.search(
        r'^inference_objective_request_total\{model_name="m",priority="0",'
        r'target_model_name="m"\} 3\.0$',
        text,
        re.M,
    ), text
    assert re.search(
        r'^inference_objective_request_error_total\{error_code="400",.*\} 1\.0$', text, re.M
    )
    assert re.search(
        r'^llm_d_epp_request_total\{fairness_id="tenant-a",model_name="m",priority="0",'
        r'target_model_name="m"\} 3\.0$',
        text,
        re.M,
    )
    assert re.search(
        r'^llm_d_epp_request_ttft_seconds_count\{.*streaming="true".*\} 2\.0$', text, re.M
    )
    assert re.search(r"^llm_d_epp_request_output_tokens_sum\{.*\} 12\.0$", text, re.M)
    assert re.search(r"^llm_d_epp_request_running\{.*\} 0\.0$", text, re.M)
    assert re.search(
        r'^inference_extension_scheduler_attempts_total\{namespace="",pod_name="127\.0\.0\.1:'
        rf'{sim.port}",port="{sim.port}",status="success",target_model_name="m"\}} 3\.0$',
        text,
        re.M,
    ), text
    # GIE's buckets, not kvgate's
    assert 'inference_objective_input_tokens_bucket{le="32778.0"' in text
    assert 'llm_d_epp_scheduler_e2e_duration_seconds_bucket{le="0.0001"}' in text
