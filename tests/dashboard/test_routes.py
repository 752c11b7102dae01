"""The dashboard's routes on both front doors: a real ``kvgate serve`` in front of real
``kvgate sim`` replicas (SSE while load runs, numbers checked against /metrics, the page and its
assets, ``kvgate explain`` against it), and ``kvgate epp``'s metrics port."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import aiohttp
import pytest

from kvgate.cli import main
from kvgate.endpoints.static import spec_from_url
from kvgate.extproc.app import EppOptions, EppServer
from support.metrics_server import start_metrics_server
from support.procs import Proc, free_port, kvgate_cmd
from support.sim import start_sim

MODEL = "sim-model"
SHARED = "The quick brown fox jumps over the lazy dog; " * 30


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two sims and ``kvgate serve`` over them (module-scoped: started once)."""
    procs: list[Proc] = []
    tmp = tmp_path_factory.mktemp("dash")

    def spawn(args: list[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    try:
        sims = [start_sim(spawn, "--speed", "20", model=MODEL, name=f"sim{i}") for i in range(2)]
        port = free_port()
        args = ["serve", "--port", str(port), "--seed", "1", "--log-format", "json"]
        for sim in sims:
            args += ["--endpoint", sim.url]
        gw = spawn(kvgate_cmd(*args), name="gw")
        url = f"http://127.0.0.1:{port}"
        gw.wait_http(url + "/ready", timeout_s=30)
        yield {"url": url, "sims": sims, "proc": gw}
    finally:
        for proc in reversed(procs):
            proc.stop()


def samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


async def events(session: aiohttp.ClientSession, url: str) -> AsyncGenerator[dict[str, Any], None]:
    """Snapshots from /dashboard/events, as they arrive."""
    async with session.get(url + "/dashboard/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def chat(session: aiohttp.ClientSession, url: str, text: str) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def test_events_follow_load_and_match_metrics(gateway: dict[str, Any]) -> None:
    url = gateway["url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as resp:
            before = sum(samples(await resp.text(), "kvgate_requests_total").values())
        stream = events(session, url)
        first = await anext(stream)
        names = sorted(e["name"] for e in first["endpoints"])
        assert names == sorted(s.url.removeprefix("http://") for s in gateway["sims"])
        assert all(e["in_rotation"] and e["breaker"] == "closed" for e in first["endpoints"])
        start_total = first["totals"]["requests"]
        assert start_total == before
        load = asyncio.gather(*(chat(session, url, SHARED + f"q{i}") for i in range(8)))
        seen: list[tuple[float, dict[str, Any]]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        async for snap in stream:
            seen.append((loop.time(), snap))
            if snap["totals"]["requests"] >= start_total + 8:
                break
            assert loop.time() < deadline, "the dashboard never counted the load"
        await load
        await stream.aclose()
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
    last = seen[-1][1]
    assert last["totals"]["requests"] == sum(samples(text, "kvgate_requests_total").values())
    picks = samples(text, "kvgate_endpoint_picks_total")
    for endpoint, count in last["totals"]["picks"].items():
        assert picks[f'{{endpoint="{endpoint}"}}'] >= count
    # the newest requests carry every scorer's score per candidate and the winner
    newest = last["requests"][0]
    assert newest["status"] == 200 and newest["winner"] in newest["scores"]
    assert {"total", "prefix-cache-scorer"} <= set(newest["scores"][newest["winner"]])
    # pushed at most every 500 ms (the first two may be closer: the first is sent at once)
    times = [t for t, _ in seen]
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(times[1:]))


async def test_page_and_assets(gateway: dict[str, Any]) -> None:
    url = gateway["url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/dashboard") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
        assert '<script src="/dashboard/dashboard.js">' in page and "cdn" not in page.lower()
        for asset, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with session.get(f"{url}/dashboard/{asset}") as resp:
                assert resp.status == 200 and resp.content_type == kind
                # nothing fetched from elsewhere: the only URL is SVG's namespace name
                urls = set(re.findall(r"https?://[^\s\"')]+", await resp.text()))
                assert urls <= {"http://www.w3.org/2000/svg"}
    assert f"dashboard at {url}/dashboard" in gateway["proc"].log()


async def test_kvgate_explain_against_the_gateway(
    gateway: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url = gateway["url"]

    def explain_cli(*args: str) -> subprocess.CompletedProcess[str]:
        """``kvgate explain`` in this process (the gateway is another process)."""
        code = main(["explain", *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    async with aiohttp.ClientSession() as session:
        await chat(session, url, SHARED + "explain me")
        async with session.get(url + "/dashboard/snapshot") as resp:
            logged = (await resp.json())["requests"][0]
    served = logged["endpoint"]
    out = explain_cli("--url", url, "--json", SHARED + "explain me too")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["pick"] == served  # the prefix it holds wins
    rows = {r["name"]: r for r in report["endpoints"]}
    assert rows[served]["prefix"]["approximate"]["tokens"] > 0
    # rendered: the pick line and one row per endpoint
    out = explain_cli("--url", url, SHARED + "explain me too")
    assert out.returncode == 0, out.stderr
    assert f"pick: {served}" in out.stdout
    assert all(name in out.stdout for name in rows)
    out = explain_cli("--url", url, "--request-id", logged["request_id"])
    assert out.returncode == 0, out.stderr
    assert "logged at" in out.stdout and f"served by {served}" in out.stdout
    out = explain_cli("--url", url, "--request-id", "no-such-request")
    assert out.returncode == 1 and "not among the last" in out.stderr
    out = explain_cli("--url", url, "--model", "nope", "hi")
    assert out.returncode == 1 and "404" in out.stderr and "nope" in out.stderr


async def test_epp_serves_the_dashboard_on_its_metrics_port() -> None:
    runners, endpoints = [], []
    for _ in range(2):
        runner, hostport = await start_metrics_server()
        runners.append(runner)
        endpoints.append(hostport)
    opts = EppOptions(
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        endpoints=[spec_from_url(hp) for hp in endpoints],
        policy="llm-d-default",
    )
    server = EppServer(opts)
    await server.start()
    try:
        base = f"http://127.0.0.1:{opts.metrics_port}"
        assert server.dashboard_url == base + "/dashboard"
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                async with session.get(base + "/dashboard/snapshot") as resp:
                    snap = await resp.json()
                if sum(e["in_rotation"] for e in snap["endpoints"]) == 2:
                    break
                assert loop.time() < deadline, snap["endpoints"]
                await asyncio.sleep(0.05)
            assert snap["door"] == "epp"
            async with session.get(base + "/dashboard") as resp:
                assert resp.status == 200
            body = {"model": "m", "prompt": "hello"}
            async with session.post(base + "/debug/explain", json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["pick"] in {e["name"] for e in snap["endpoints"]}
            stream = events(session, base)
            assert (await anext(stream))["door"] == "epp"
            await stream.aclose()
    finally:
        await server.stop()
        for runner in runners:
            await runner.cleanup()
