"""The gateway end to end: real ``kvgate serve`` in front of real ``kvgate sim`` replicas,
driven by the official ``openai`` client and plain HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

MODEL = "sim-model"
KEY = "test-key-123"


def start_gateway(
    spawn: Callable[..., Proc], *endpoints: str, extra: tuple[str, ...] = (), name: str = "gw"
) -> tuple[str, Proc]:
    port = free_port()
    args = ["serve", "--port", str(port), "--log-format", "json", "--seed", "7"]
    for url in endpoints:
        args += ["--endpoint", url]
    proc = spawn(kvgate_cmd(*args, *extra), name=name)
    url = f"http://127.0.0.1:{port}"
    if endpoints or "--endpoints-file" in extra:
        proc.wait_http(url + "/health", timeout_s=30)
    return url, proc


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def metric_values(base: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of every sample of ``name`` on the gateway's /metrics."""
    _, _, body = http("GET", base + "/metrics")
    return parse_samples(body.decode(), name)


def parse_samples(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of every sample of ``name`` in one /metrics text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def requests_total(base: str) -> float:
    return sum(metric_values(base, "kvgate_requests_total").values())


def chat(n_words: int = 40, tag: str = "x") -> list[dict[str, str]]:
    words = " ".join(f"{tag}{i}" for i in range(n_words))
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": words}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two sim replicas and one gateway (auth on, round-robin), shared by this module."""
    tmp = tmp_path_factory.mktemp("gw")
    procs: list[Proc] = []

    def spawn(args: list[str], name: str = "p", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    try:
        sims = [
            start_sim(spawn, model=MODEL, speed=20, seed=i, name=f"sim{i}", wait=False)
            for i in range(2)
        ]
        for sim in sims:
            sim.proc.wait_http(sim.url + "/health", timeout_s=30)
        base, gw = start_gateway(
            spawn,
            *(s.url for s in sims),
            extra=("--policy", "round-robin", "--api-key", KEY, "--max-body-bytes", "20000"),
        )
        gw.wait_http(base + "/ready", timeout_s=15)
        yield {"base": base, "gw": gw, "sims": sims}
    finally:
        for proc in reversed(procs):
            proc.stop()


def client(base: str, key: str = KEY, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + prefix, api_key=key, max_retries=0, timeout=30)


def test_openai_client_chat_completions_streaming(cluster: dict[str, Any]) -> None:
    base = cluster["base"]
    before = requests_total(base)
    c = client(base)
    r = c.chat.completions.create(model=MODEL, messages=chat(tag="a"), max_tokens=8)  # type: ignore[arg-type]
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.prompt_tokens > 0
    comp = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert comp.choices[0].text
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=chat(tag="s"),  # type: ignore[arg-type]
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert len([ch for ch in chunks if ch.choices]) >= 3  # passed on chunk by chunk
    assert chunks[-1].usage is not None
    # the seed's path shape serves the same API
    ns = client(base, prefix="/my-ns/my-svc/v1")
    r2 = ns.chat.completions.create(model=MODEL, messages=chat(tag="a"), max_tokens=4)  # type: ignore[arg-type]
    assert r2.choices[0].message.content
    models = [m.id for m in c.models.list()]
    assert models == [MODEL]
    # counters reconcile: 4 inference requests, each counted once
    wait_until(lambda: requests_total(base) - before == 4, timeout_s=5, what="requests_total")


def test_cache_hit_on_repeated_prompt(cluster: dict[str, Any]) -> None:
    c = client(cluster["base"])
    msgs = chat(200, tag="cache")
    first = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)  # type: ignore[arg-type]
    # round-robin alternates; send twice more so one lands where the prefix is cached
    cached = []
    for _ in range(2):
        r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)  # type: ignore[arg-type]
        details = r.usage.prompt_tokens_details if r.usage else None
        cached.append(details.cached_tokens if details else 0)
    assert first.usage is not None
    assert max(cached) > 0


def test_auth_required(cluster: dict[str, Any]) -> None:
    base = cluster["base"]
    body = {"model": MODEL, "messages": chat(3), "max_tokens": 2}
    status, _, raw = http("POST", base + "/v1/chat/completions", body)
    assert status == 401
    err = json.loads(raw)["error"]
    assert err["type"] == "authentication_error"
    status, _, _ = http(
        "POST", base + "/v1/chat/completions", body, {"Authorization": "Bearer wrong"}
    )
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        client(base, key="nope").models.list()
    assert http("GET", base + "/health")[0] == 200  # probes stay open
    assert http("GET", base + "/ready")[0] == 200
    assert http("GET", base + "/metrics")[0] == 200


def test_routing_headers_from_clients_are_ignored(cluster: dict[str, Any]) -> None:
    base = cluster["base"]
    target = cluster["sims"][1]
    served = []
    for _ in range(4):
        status, headers, _ = http(
            "POST",
            base + "/v1/chat/completions",
            {"model": MODEL, "messages": chat(3), "max_tokens": 1},
            {
                "Authorization": f"Bearer {KEY}",
                "x-gateway-destination-endpoint": f"127.0.0.1:{target.port}",
                "x-gateway-destination-endpoint-subset": f"127.0.0.1:{target.port}",
            },
        )
        assert status == 200
        served.append(headers["x-kvgate-endpoint"])
    # round-robin alternates over both replicas whatever the client asked for
    assert set(served) == {f"127.0.0.1:{s.port}" for s in cluster["sims"]}


def test_errors_in_openai_shape(cluster: dict[str, Any]) -> None:
    base = cluster["base"]
    auth = {"Authorization": f"Bearer {KEY}"}
    url = base + "/v1/chat/completions"
    status, _, raw = http("POST", url, {"model": "nope", "messages": chat(2)}, auth)
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
    status, _, raw = http("POST", url, b"{not json", auth)
    assert status == 400 and "error" in json.loads(raw)
    status, _, raw = http("POST", url, {"model": MODEL, "messages": chat(5000)}, auth)
    assert status == 413 and "limit" in json.loads(raw)["error"]["message"]
    status, _, raw = http("POST", url, {"model": MODEL}, auth)
    assert status == 400 and json.loads(raw)["error"]["param"] == "messages"
    status, _, raw = http("GET", base + "/v2/nothing", None, auth)
    assert status == 404 and "error" in json.loads(raw)


def test_metrics_and_request_log(cluster: dict[str, Any]) -> None:
    base = cluster["base"]
    client(base).chat.completions.create(
        model=MODEL,
        messages=chat(tag="m"),  # type: ignore[arg-type]
        max_tokens=3,
        stream=True,
    ).close()
    _, _, raw = http("GET", base + "/metrics")
    text = raw.decode()
    for name in (
        "kvgate_requests_total",
        "kvgate_request_duration_seconds_bucket",
        "kvgate_time_to_first_token_seconds_bucket",
        "vllm_llmd_time_to_first_token_seconds_bucket",
        "kvgate_scheduling_duration_seconds_bucket",
        "kvgate_plugin_duration_seconds_bucket",
        "kvgate_endpoint_picks_total",
        "kvgate_kv_cache_hit_rate",
        "vllm_llmd_kv_cache_hit_rate",
        "kvgate_endpoint_in_rotation",
    ):
        assert name in text, name
    # (both from one scrape: the rate moves as the replicas' counters are re-scraped)
    rate = parse_samples(text, "kvgate_kv_cache_hit_rate")[""]
    assert rate == parse_samples(text, "vllm_llmd_kv_cache_hit_rate")[""]
    assert 0.0 <= rate <= 1.0
    # one JSON line per request with the pick and every scorer's score
    lines = [json.loads(x) for x in cluster["gw"].log().splitlines() if x.startswith("{")]
    reqs = [x for x in lines if x.get("logger") == "kvgate.requests" and x.get("status") == 200]
    assert reqs
    last = reqs[-1]
    assert last["endpoint"] in last["scores"]
    assert all("total" in s for s in last["scores"].values())


def _slow_cluster(spawn: Callable[..., Proc], n: int, **sim_kw: Any) -> list[SimHandle]:
    sims = [
        start_sim(spawn, model=MODEL, seed=i, name=f"sim{i}", wait=False, **sim_kw)
        for i in range(n)
    ]
    for sim in sims:
        sim.proc.wait_http(sim.url + "/health", timeout_s=30)
    return sims


def test_replica_killed_mid_run(spawn: Callable[..., Proc]) -> None:
    sims = _slow_cluster(spawn, 2, speed=2)
    base, gw = start_gateway(spawn, *(s.url for s in sims), extra=("--policy", "round-robin"))
    gw.wait_http(base + "/ready", timeout_s=15)
    c = client(base)
    n = 16
    victim = f"127.0.0.1:{sims[0].port}"
    streaming_on_victim = threading.Semaphore(0)  # released when a victim stream is mid-flight

    def one(i: int) -> str:
        try:
            if i % 4 in (1, 2):  # not aligned with round-robin: streams land on both replicas
                raw = c.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=chat(tag=f"k{i}"),  # type: ignore[arg-type]
                    max_tokens=400,
                    stream=True,
                )
                served_by = raw.headers["x-kvgate-endpoint"]
                for k, _ in enumerate(raw.parse()):
                    if k == 0 and served_by == victim:
                        streaming_on_victim.release()
                return "ok"
            c.chat.completions.create(model=MODEL, messages=chat(tag=f"k{i}"), max_tokens=400)  # type: ignore[arg-type]
            return "ok"
        except openai.APIError as exc:  # explicit errors only; a hang would time out
            return f"error:{type(exc).__name__}"

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        assert streaming_on_victim.acquire(timeout=20), "no stream reached the victim replica"
        sims[0].proc.kill()
        outcomes = [f.result(timeout=60) for f in futures]
    assert len(outcomes) == n
    assert "ok" in outcomes
    # a stream cut after its first byte ends in an explicit error (terminal SSE error event);
    # requests that had no answer yet were retried on the survivor
    assert any(o.startswith("error") for o in outcomes)
    # after the kill every new request lands on the survivor (retried if needed)
    for i in range(4):
        r = c.chat.completions.create(model=MODEL, messages=chat(tag=f"after{i}"), max_tokens=2)  # type: ignore[arg-type]
        assert r.choices
    wait_until(lambda: requests_total(base) == n + 4, timeout_s=15, what="counters reconcile")
    assert metric_values(base, "kvgate_requests_in_flight")[""] == 0


def test_retries_and_no_healthy_endpoint(
    spawn: Callable[..., Proc], cluster: dict[str, Any]
) -> None:
    failing = start_sim(
        spawn, model=MODEL, speed=50, failure_rate=1.0, failure_kinds="500", name="bad"
    )
    good = cluster["sims"][0]
    base, gw = start_gateway(
        spawn,
        failing.url,
        good.url,
        extra=("--policy", "round-robin", "--max-retries", "2"),
    )
    gw.wait_http(base + "/ready", timeout_s=15)
    c = client(base)
    for i in range(4):
        r = c.chat.completions.create(model=MODEL, messages=chat(tag=f"r{i}"), max_tokens=2)  # type: ignore[arg-type]
        assert r.choices
    retries = metric_values(base, "kvgate_retries_total")
    assert sum(retries.values()) >= 1
    # no healthy endpoint: 503 with Retry-After, in OpenAI's shape
    dead = f"http://127.0.0.1:{free_port()}"
    base2, _ = start_gateway(spawn, dead, name="gw-dead")
    assert http("GET", base2 + "/ready")[0] == 503
    status, headers, raw = http(
        "POST", base2 + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    )
    assert status == 503
    assert headers.get("retry-after") == "1"
    assert json.loads(raw)["error"]["type"] == "server_error"


def test_client_disconnect_cancels_upstream(spawn: Callable[..., Proc]) -> None:
    (sim,) = _slow_cluster(spawn, 1, speed=1)
    base, gw = start_gateway(
        spawn, sim.url, extra=("--policy", "random", "--request-timeout", "2s")
    )
    gw.wait_http(base + "/ready", timeout_s=15)
    c = client(base)
    stream = c.chat.completions.create(
        model=MODEL,
        messages=chat(tag="d"),  # type: ignore[arg-type]
        max_tokens=2000,
        stream=True,
    )

    def running() -> float:
        _, _, raw = http("GET", sim.url + "/metrics")
        m = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", raw.decode(), re.M)
        return float(m.group(1)) if m else -1.0

    next(iter(stream))
    # the first chunk reached the client while the replica is still generating: no buffering
    assert running() == 1.0
    stream.close()
    wait_until(lambda: running() == 0.0, timeout_s=5, what="upstream request aborted")
    wait_until(
        lambda: (
            metric_values(base, "kvgate_requests_total").get(
                f'{{endpoint="127.0.0.1:{sim.port}",model="{MODEL}",status="499"}}', 0
            )
            == 1
        ),
        timeout_s=5,
        what="499 counted",
    )
    # a request that outlives --request-timeout ends in a 504 in OpenAI's shape
    status, _, raw = http(
        "POST",
        base + "/v1/chat/completions",
        {"model": MODEL, "messages": chat(tag="t"), "max_tokens": 2000},
    )
    assert status == 504
    assert json.loads(raw)["error"]["code"] == "timeout"


def test_endpoints_file_add_and_remove(
    spawn: Callable[..., Proc], tmp_path: Path, cluster: dict[str, Any]
) -> None:
    a, b = cluster["sims"]
    f = tmp_path / "endpoints.yaml"
    f.write_text(f"- {a.url}\n")
    base, gw = start_gateway(spawn, extra=("--endpoints-file", str(f), "--policy", "round-robin"))
    gw.wait_http(base + "/ready", timeout_s=15)
    c = client(base)

    def served(n: int) -> set[str]:
        out = set()
        for i in range(n):
            r = c.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=chat(3, tag=f"f{i}"),  # type: ignore[arg-type]
                max_tokens=1,
            )
            out.add(r.headers["x-kvgate-endpoint"])
        return out

    assert served(2) == {f"127.0.0.1:{a.port}"}
    f.write_text(f"- {a.url}\n- url: {b.url}\n  name: replica-b\n")
    wait_until(
        lambda: (
            metric_values(base, "kvgate_endpoint_in_rotation").get('{endpoint="replica-b"}') == 1.0
        ),
        timeout_s=10,
        what="replica-b in rotation",
    )
    assert served(4) == {f"127.0.0.1:{a.port}", "replica-b"}
    f.write_text(f"- url: {b.url}\n  name: replica-b\n")
    wait_until(
        lambda: (
            '{endpoint="127.0.0.1:' + str(a.port) + '"}'
            not in metric_values(base, "kvgate_endpoint_in_rotation")
        ),
        timeout_s=10,
        what="a removed",
    )
    assert served(3) == {"replica-b"}
