"""Flow control end to end: real ``kvgate serve`` in front of a real ``kvgate sim`` replica.

The pool is held saturated by one long streamed request: the configs use llm-d's
``concurrency-detector`` with ``maxConcurrency: 1`` over the one replica, so saturation is
exactly "one request in flight" and needs no scrape timing. Closing that stream frees the
slot, and the queued requests are then dispatched one at a time; each one's request line is
written before the next one is dispatched (the next dispatch waits for the previous
attempt's end), so the order of the gateway's request log is the dispatch order.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvgate.extproc import envoyconfig
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

pytestmark = pytest.mark.slow

MODEL = "sim-model"
ENVOY_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy" / "envoy.yaml"
OBJECTIVES = """apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 1, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: standard}
spec: {priority: 0, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: pool}}
"""


def picker_config(flow_control: str) -> str:
    """An EndpointPickerConfig with the flowControl gate, one request in flight at a time."""
    return f"""apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {{type: queue-scorer}}
- {{type: max-score-picker}}
- {{type: concurrency-detector, name: one-at-a-time, parameters: {{maxConcurrency: 1}}}}
- {{type: round-robin-fairness-policy, name: take-turns}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
flowControl:
  saturationDetector: {{pluginRef: one-at-a-time}}
{flow_control}"""


#: Band 0 takes turns between fairness ids; a long TTL so nothing expires.
ORDERING = picker_config(
    "  defaultRequestTTL: 30s\n  priorityBands:\n  - {priority: 0, fairnessPolicyRef: take-turns}\n"
)
#: At most 2 queued requests, each for at most 1 s.
LIMITS = picker_config("  maxRequests: 2\n  defaultRequestTTL: 1s\n")


@dataclass
class Gateway:
    """A front door: ``url`` takes OpenAI requests, ``metrics_url`` serves its /metrics."""

    url: str
    proc: Proc
    metrics_url: str = ""

    def __post_init__(self) -> None:
        self.metrics_url = self.metrics_url or self.url + "/metrics"

    def request_lines(self) -> list[dict[str, Any]]:
        """The gateway's JSON request lines so far, in the order written."""
        out = []
        for line in self.proc.log().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "kvgate.requests":
                    out.append(record)
        return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHandle]:
    tmp = tmp_path_factory.mktemp("fc-sim")
    procs: list[Proc] = []

    def spawn(args: list[str], name: str = "p", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp / f"{name}.log", env=env)
        procs.append(proc)
        return proc

    try:
        yield start_sim(spawn, model=MODEL, seed=1, max_num_seqs=4)
    finally:
        for proc in procs:
            proc.stop()


def objectives_file(tmp: Path) -> Path:
    path = tmp / "objectives.yaml"
    path.write_text(OBJECTIVES)
    return path


def start_gateway(
    spawn: Callable[..., Proc], tmp: Path, sim: SimHandle, config: str, name: str = "gw"
) -> Gateway:
    objectives = objectives_file(tmp)
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoint", sim.url, "--log-format", "json",
            "--config-text", config, "--objectives", str(objectives),
        ),
        name=name,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/ready", timeout_s=30)
    return Gateway(url, proc)


def completion(max_tokens: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": "Tell me about flow control.",
        "max_tokens": max_tokens,
        **extra,
    }


def headers(rid: str, fairness: str = "", objective: str = "") -> dict[str, str]:
    out = {"x-request-id": rid}
    if fairness:
        out["x-gateway-inference-fairness-id"] = fairness
    if objective:
        out["x-gateway-inference-objective"] = objective
    return out


def samples(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of every sample of ``name`` in a /metrics page."""
    found = re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    return {labels: float(value) for labels, value in found}


def label(labels: str, name: str) -> str:
    """The value of label ``name`` in a sample's label text ('' when absent)."""
    m = re.search(rf'\b{name}="([^"]*)"', labels)
    return m.group(1) if m else ""


def by_label(text: str, name: str, key: str) -> dict[str, float]:
    """``name``'s samples summed by the value of label ``key``."""
    out: dict[str, float] = {}
    for labels, value in samples(text, name).items():
        out[label(labels, key)] = out.get(label(labels, key), 0.0) + value
    return out


async def poll(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> None:
    """Await ``check()`` (sync or async) until truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not after {timeout_s}s: {what}"
        await asyncio.sleep(0.02)


class Client:
    """aiohttp against one gateway: requests, /metrics, and a held streamed request."""

    def __init__(self, session: aiohttp.ClientSession, gw: Gateway) -> None:
        self.session = session
        self.gw = gw

    async def metrics(self) -> str:
        async with self.session.get(self.gw.metrics_url) as resp:
            return await resp.text()

    async def queued(self) -> float:
        text = await self.metrics()
        return sum(samples(text, "inference_extension_flow_control_queue_size").values())

    async def post(self, body: dict[str, Any], hdrs: dict[str, str]) -> tuple[int, Any, float]:
        """(status, response with headers, seconds the client waited)."""
        t0 = time.monotonic()
        async with self.session.post(
            self.gw.url + "/v1/completions", json=body, headers=hdrs
        ) as resp:
            data = await resp.read()
            resp.body_bytes = data  # type: ignore[attr-defined]
            return resp.status, resp, time.monotonic() - t0

    async def enqueue(
        self, body: dict[str, Any], hdrs: dict[str, str], expect_queued: int
    ) -> asyncio.Task[tuple[int, Any, float]]:
        """Send a request and return once flow control holds ``expect_queued`` requests."""
        task = asyncio.create_task(self.post(body, hdrs))
        await poll(lambda: task.done() or self.queued_is(expect_queued), f"{expect_queued} queued")
        assert not task.done(), "the request was answered instead of queued"
        return task

    async def queued_is(self, n: int) -> bool:
        return await self.queued() == n

    async def hold(self, rid: str) -> aiohttp.ClientResponse:
        """A long stream, read until its first chunk: it holds the one slot until closed."""
        resp = await self.session.post(
            self.gw.url + "/v1/completions",
            json=completion(4000, stream=True),
            headers=headers(rid),
        )
        assert resp.status == 200
        await resp.content.readany()
        return resp


async def raw_request(gw: Gateway, body: dict[str, Any], rid: str) -> asyncio.StreamWriter:
    """A request on a bare connection, never read: closing the writer is the client leaving."""
    _, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    raw = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"x-request-id: %s\r\nContent-Length: %d\r\n\r\n%s" % (rid.encode(), len(raw), raw)
    )
    await writer.drain()
    return writer


async def test_priority_then_turns_between_tenants_then_arrival_order(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle
) -> None:
    gw = start_gateway(spawn, tmp_path, sim, ORDERING)
    async with aiohttp.ClientSession() as session:
        client = Client(session, gw)
        holder = await client.hold("holder")
        queued = [
            ("a1", "tenant-a", "standard"),
            ("a2", "tenant-a", "standard"),
            ("a3", "tenant-a", ""),
            ("b1", "tenant-b", "standard"),
            ("b2", "tenant-b", ""),
            ("c1", "tenant-a", "critical"),  # arrives last, leaves first
        ]
        tasks = [
            await client.enqueue(completion(), headers(rid, tenant, objective), i + 1)
            for i, (rid, tenant, objective) in enumerate(queued)
        ]
        text = await client.metrics()
        sizes = samples(text, "inference_extension_flow_control_queue_size")
        flows = {(label(k, "fairness_id"), label(k, "priority")): v for k, v in sizes.items()}
        assert flows == {("tenant-a", "0"): 3.0, ("tenant-b", "0"): 2.0, ("tenant-a", "1"): 1.0}
        assert all('inference_pool="static"' in k and f'model_name="{MODEL}"' in k for k in sizes)
        assert samples(text, "inference_extension_flow_control_pool_saturation") == {
            '{inference_pool="static"}': 1.0
        }
        holder.close()  # the client leaves: its slot frees and dispatch begins
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert [status for status, _, _ in replies] == [200] * len(queued)
    await poll(lambda: len(gw.request_lines()) == 7, "every request line written")
    order = [line["request_id"] for line in gw.request_lines()]
    assert order == ["holder", "c1", "a1", "b1", "a2", "b2", "a3"]
    lines = {line["request_id"]: line for line in gw.request_lines()}
    assert lines["holder"]["status"] == 499
    assert (lines["c1"]["priority"], lines["c1"]["fairness_id"]) == (1, "tenant-a")
    assert all(lines[rid]["queue_wait_ms"] > 0 for rid, _, _ in queued)


def openai_error(resp: Any) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(resp.body_bytes)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_shed_capacity_ttl_and_a_client_leaving_while_queued(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle
) -> None:
    gw = start_gateway(spawn, tmp_path, sim, LIMITS)
    async with aiohttp.ClientSession() as session:
        client = Client(session, gw)
        holder = await client.hold("holder")
        # sheddable (negative priority) while saturated: 429 at once
        status, resp, waited = await client.post(completion(), headers("shed", "", "batch"))
        assert (status, waited < 0.5) == (429, True)
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
        error = openai_error(resp)
        assert error["type"] == "rate_limit_error"
        assert error["message"] == "system saturated, sheddable request dropped"
        # maxRequests 2: the third queued request is refused at once
        ttl = [await client.enqueue(completion(), headers(f"q{i}"), i) for i in (1, 2)]
        status, resp, waited = await client.post(completion(), headers("over"))
        assert (status, waited < 0.5) == (429, True)
        assert resp.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
        assert openai_error(resp)["message"] == "request rejected pre-queue: queue at capacity"
        # defaultRequestTTL 1s: both queued requests are answered by then, never later
        for status, resp, waited in await asyncio.wait_for(asyncio.gather(*ttl), 5):
            assert status == 429 and 0.9 < waited < 1.5
            assert resp.headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"
            assert resp.headers["Retry-After"] == "1"
            assert openai_error(resp)["message"] == (
                "request timed out in queue: request evicted from queue: request TTL expired"
            )
        # a client that leaves while queued is taken out of the queue and counted
        writer = await raw_request(gw, completion(), "gone")
        await poll(lambda: client.queued_is(1), "the raw request queued")
        writer.close()
        await writer.wait_closed()
        await poll(lambda: client.queued_is(0), "the departed request left the queue")
        holder.close()
        await poll(lambda: len(gw.request_lines()) == 6, "every request line written")
        text = await client.metrics()
    # every request the clients sent is counted exactly once, with the status they saw
    statuses = by_label(text, "kvgate_requests_total", "status")
    assert statuses == {"429": 4.0, "499": 2.0}
    assert sum(samples(text, "inference_objective_request_total").values()) == 6
    assert sum(samples(text, "kvgate_requests_in_flight").values()) == 0
    outcomes = by_label(text, "inference_extension_flow_control_requests_total", "outcome")
    assert outcomes == {
        "Dispatched": 1.0,
        "Shed": 1.0,
        "RejectedCapacity": 1.0,
        "EvictedTTL": 2.0,
        "EvictedContextCancelled": 1.0,
    }
    lines = {line["request_id"]: line for line in gw.request_lines()}
    assert set(lines) == {"holder", "shed", "q1", "q2", "over", "gone"}
    # the gateway's own clock: answered within the TTL (the timer is set 10 ms early)
    assert all(lines[rid]["duration_ms"] < 1000 for rid in ("q1", "q2"))
    assert (lines["gone"]["status"], lines["gone"]["error"]) == (499, "client_disconnect")
    assert (lines["shed"]["priority"], lines["shed"]["error"]) == (-1, "shed")


def start_epp_behind_envoy(
    spawn: Callable[..., Proc], tmp: Path, sim: SimHandle, config: str, grpc_server: str = "h2"
) -> Gateway:
    """``kvgate epp`` over the replica, and Envoy running the shipped example in front."""
    grpc, health, metrics = free_port(), free_port(), free_port()
    epp = spawn(
        kvgate_cmd(
            "epp", "--host", "127.0.0.1", "--grpc-port", str(grpc),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoint", f"127.0.0.1:{sim.port}", "--config-text", config,
            "--objectives", str(objectives_file(tmp)), "--zap-encoder", "json",
            "--grpc-server", grpc_server,
        ),
        name="epp",
    )  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics}/metrics"
    epp.wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout_s=30)
    ports = envoyconfig.EnvoyPorts(listen=free_port(), admin=free_port(), epp=grpc)
    cfg = envoyconfig.adapt(ENVOY_EXAMPLE, ports, access_log=tmp / "envoy-access.log")
    envoy = spawn(envoyconfig.command(envoyconfig.write(cfg, tmp / "envoy.yaml")), name="envoy")
    envoy.wait_http(f"http://127.0.0.1:{ports.admin}/ready", timeout_s=30)
    gw = Gateway(f"http://127.0.0.1:{ports.listen}", epp, metrics_url)

    def in_rotation() -> bool:
        with urllib.request.urlopen(metrics_url, timeout=2) as resp:
            text = resp.read().decode()
        return samples(text, "inference_pool_ready_pods") == {'{name="static"}': 1.0}

    wait_until(in_rotation, timeout_s=10, what="the replica in the EPP's rotation")
    return gw


@pytest.mark.envoy
async def test_the_epp_behind_envoy_queues_and_sheds_the_same_way(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle
) -> None:
    """A request held by flow control gets its routing reply later and Envoy forwards it
    then; both front doors write the same request line (only ``door`` differs)."""
    epp = start_epp_behind_envoy(spawn, tmp_path, sim, ORDERING)
    async with aiohttp.ClientSession() as session:
        client = Client(session, epp)
        holder = await client.hold("holder")
        status, resp, waited = await client.post(completion(), headers("shed", "", "batch"))
        assert (status, waited < 0.5) == (429, True)
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
        assert openai_error(resp)["message"] == "system saturated, sheddable request dropped"
        tasks = [
            await client.enqueue(completion(), headers("a1", "tenant-a", "standard"), 1),
            await client.enqueue(completion(), headers("a2", "tenant-a"), 2),
            await client.enqueue(completion(), headers("c1", "tenant-b", "critical"), 3),
        ]
        holder.close()
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [status for status, _, _ in replies] == [200, 200, 200]
        assert all(json.loads(r.body_bytes)["choices"] for _, r, _ in replies)
        await poll(lambda: len(epp.request_lines()) == 5, "every request line written")
        text = await client.metrics()
    assert [line["request_id"] for line in epp.request_lines()] == [
        "shed", "holder", "c1", "a1", "a2"
    ]  # fmt: skip
    outcomes = by_label(text, "inference_extension_flow_control_requests_total", "outcome")
    assert outcomes == {"Dispatched": 4.0, "Shed": 1.0}
    # The EPP cannot tell a client that left mid-stream from a broken upstream (Envoy resets
    # the ext_proc stream either way): the holder counts as the 200 it began as, with
    # error stream_error, where `kvgate serve` says 499 client_disconnect.
    assert by_label(text, "kvgate_requests_total", "status") == {"200": 4.0, "429": 1.0}
    holder_line = next(x for x in epp.request_lines() if x["request_id"] == "holder")
    assert (holder_line["status"], holder_line["error"]) == (200, "stream_error")
    # the same request through `kvgate serve` logs the same fields
    gw = start_gateway(spawn, tmp_path, sim, ORDERING)
    async with aiohttp.ClientSession() as session:
        status, _, _ = await Client(session, gw).post(completion(), headers("via-serve", "t"))
        assert status == 200
    await poll(lambda: len(gw.request_lines()) == 1, "the gateway's request line")
    (served,) = gw.request_lines()
    routed = next(x for x in epp.request_lines() if x["request_id"] == "a1")
    assert (served["door"], routed["door"]) == ("gateway", "epp")
    assert set(served) == set(routed)
    assert {k for k, v in served.items() if v is None} == {
        k for k, v in routed.items() if v is None
    }


async def test_the_default_detector_saturates_on_the_replicas_scraped_queue(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle
) -> None:
    """``llm-d-default+flow-control``: GIE's detector (queue depth >= 5, fresh metrics)
    reads the replica's own queue, so flow control holds requests once vLLM's queue is full."""
    objectives = objectives_file(tmp_path)
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoint", sim.url, "--log-format", "json",
            "--policy", "llm-d-default+flow-control", "--objectives", str(objectives),
        ),
        name="gw-default",
    )  # fmt: skip
    gw = Gateway(f"http://127.0.0.1:{port}", proc)
    proc.wait_http(gw.url + "/ready", timeout_s=30)
    async with aiohttp.ClientSession() as session:
        client = Client(session, gw)
        # max-num-seqs 4: four run and five wait in the replica's queue (those get no
        # first chunk, so they are held as tasks)
        holders = [await raw_request(gw, completion(4000, stream=True), f"h{i}") for i in range(9)]

        async def replica_queue_full() -> bool:
            text = await client.metrics()
            return sum(samples(text, "kvgate_endpoint_queue_size").values()) >= 5

        await poll(replica_queue_full, "the replica's waiting queue scraped at >= 5")
        status, resp, _ = await client.post(completion(), headers("shed", "", "batch"))
        assert status == 429
        assert resp.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
        waiting = await client.enqueue(completion(), headers("waits"), 1)
        text = await client.metrics()
        assert samples(text, "inference_extension_flow_control_pool_saturation") == {
            '{inference_pool="static"}': 1.0
        }
        for writer in holders:  # the clients leave: the replica aborts their requests
            writer.close()
            await writer.wait_closed()
        status, _, _ = await asyncio.wait_for(waiting, 20)
        assert status == 200


#: The one slot, and enableEviction: a sheddable request in flight makes room for a higher one.
EVICTION = picker_config("  defaultRequestTTL: 30s\n  enableEviction: true\n")


async def sheddable_dispatched(client: Client, n: int) -> bool:
    """Flow control has dispatched ``n`` priority -1 requests (each is then in flight: the
    dispatch and the attempt's start happen in one step)."""
    text = await client.metrics()
    requests = samples(text, "inference_extension_flow_control_requests_total")
    return (
        sum(v for k, v in requests.items() if 'outcome="Dispatched"' in k and 'priority="-1"' in k)
        == n
    )


async def evict_both_ways(client: Client) -> tuple[bytes, tuple[int, Any, float]]:
    """A sheddable stream, then a sheddable JSON request, each in the one slot and each
    evicted by a critical request; returns (the stream's bytes after its first chunk, the
    JSON request's reply)."""
    session = client.session
    stream = await session.post(
        client.gw.url + "/v1/completions",
        json=completion(4000, stream=True),
        headers=headers("batch-sse", "", "batch"),
    )
    assert stream.status == 200
    await stream.content.readany()
    critical = asyncio.create_task(client.post(completion(), headers("crit-1", "", "critical")))
    try:
        rest = await asyncio.wait_for(stream.content.read(), 10)
    except aiohttp.ClientPayloadError:  # Envoy resets a stream already started
        rest = b""
    finally:
        stream.release()
    status, _, _ = await asyncio.wait_for(critical, 10)
    assert status == 200
    batch_json = asyncio.create_task(
        client.post(completion(4000), headers("batch-json", "", "batch"))
    )
    await poll(lambda: sheddable_dispatched(client, 2), "the sheddable JSON request in flight")
    status, _, _ = await client.post(completion(), headers("crit-2", "", "critical"))
    assert status == 200
    return rest, await asyncio.wait_for(batch_json, 10)


async def check_evicted(client: Client, status: int, resp: Any) -> str:
    """The JSON request's 429, both request lines and llm-d's revocation counters; returns
    the /metrics page."""
    assert status == 429
    assert resp.headers["x-llm-d-request-dropped-reason"] == "evicted"
    assert openai_error(resp)["message"] == "request evicted by flow control"
    gw = client.gw
    await poll(lambda: len(gw.request_lines()) == 4, "every request line written")
    lines = {line["request_id"]: line for line in gw.request_lines()}
    for rid in ("batch-sse", "batch-json"):
        assert (lines[rid]["status"], lines[rid]["error"]) == (429, "evicted")
    text = await client.metrics()
    issued = by_label(text, "llm_d_epp_flow_control_revocations_issued_total", "priority")
    ended = by_label(text, "llm_d_epp_flow_control_revocations_total", "outcome")
    assert (issued, ended) == ({"1": 2.0}, {"confirmed": 2.0, "timed_out": 0.0})
    return text


async def test_eviction_ends_sheddable_requests_for_a_higher_band_through_serve(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle
) -> None:
    gw = start_gateway(spawn, tmp_path, sim, EVICTION)
    async with aiohttp.ClientSession() as session:
        client = Client(session, gw)
        rest, (status, resp, _) = await evict_both_ways(client)
        # the stream had begun: a terminal SSE error event with llm-d's 429, then the end
        events = [json.loads(x[6:]) for x in rest.split(b"\n") if x.startswith(b"data: {")]
        assert events[-1]["error"]["code"] == 429
        assert events[-1]["error"]["message"] == "request evicted by flow control"
        assert rest.endswith(b"data: [DONE]\n\n")
        # the JSON answer had not: the client gets the 429 itself
        text = await check_evicted(client, status, resp)
    assert by_label(text, "kvgate_requests_total", "status") == {"200": 2.0, "429": 2.0}


@pytest.mark.envoy
@pytest.mark.parametrize("grpc_server", ["h2", "grpcio"])
async def test_eviction_through_the_epp_behind_envoy(
    spawn: Callable[..., Proc], tmp_path: Path, sim: SimHandle, grpc_server: str
) -> None:
    """llm-d's answer: an ImmediateResponse 429 in the response phase. The held JSON answer
    reaches the client as that 429; Envoy cuts a stream whose headers were already sent.
    Under grpcio the wait for Envoy's next message is woken for it (a JSON answer sends
    none until it ends)."""
    epp = start_epp_behind_envoy(spawn, tmp_path, sim, EVICTION, grpc_server)
    async with aiohttp.ClientSession() as session:
        client = Client(session, epp)
        rest, (status, resp, _) = await evict_both_ways(client)
        assert b"[DONE]" not in rest  # cut, not finished
        await check_evicted(client, status, resp)
