"""vLLM's other JSON routes through a real `kvgate serve`: routed by model, forwarded to the
same path with the body unchanged, scheduled like completions or chat on what they carry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kvgate.openai.requests import OTHER_ROUTES, routing_view
from support.metrics_server import VLLM_METRICS_PAGE
from support.procs import Proc, free_port, kvgate_cmd

MODEL = "m"


async def _echo_server() -> tuple[web.AppRunner, int, list[dict[str, object]]]:
    """A model server that lists MODEL, is scrapable, and echoes what each POST carried."""
    seen: list[dict[str, object]] = []

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=VLLM_METRICS_PAGE)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            {"path": request.path, "body": body, "rid": request.headers.get("x-request-id")}
        )
        return web.json_response({"path": request.path, "usage": {"prompt_tokens": 3}})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, seen


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    runner, up_port, seen = await _echo_server()
    port = free_port()
    proc = Proc(
        kvgate_cmd(
            "serve",
            "--endpoint",
            f"http://127.0.0.1:{up_port}",
            "--port",
            str(port),
            "--service-path",
            "ns/svc",
        ),
        tmp_path / "gateway.log",
    )
    try:
        # in a thread: the echo server answers the gateway's scrapes on this event loop
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/ready", 60)
        yield f"http://127.0.0.1:{port}", seen
    finally:
        proc.stop()
        await runner.cleanup()


BODIES: dict[str, dict[str, object]] = {
    "/v1/responses": {"model": MODEL, "input": [{"role": "user", "content": "hi"}]},
    "/v1/embeddings": {"model": MODEL, "input": ["a", "b"]},
    "/tokenize": {"model": MODEL, "prompt": "hello"},
    "/detokenize": {"model": MODEL, "tokens": [1, 2, 3]},
    "/pooling": {"model": MODEL, "input": "x"},
    "/classify": {"model": MODEL, "input": "x"},
    "/score": {"model": MODEL, "text_1": "a", "text_2": "b"},
    "/v1/score": {"model": MODEL, "text_1": "a", "text_2": ["b"]},
    "/rerank": {"model": MODEL, "query": "q", "documents": ["d"]},
    "/v1/rerank": {"model": MODEL, "query": "q", "documents": ["d"]},
    "/v2/rerank": {"model": MODEL, "query": "q", "documents": ["d"]},
    "/invocations": {"model": MODEL, "prompt": "p"},
}


def test_every_route_has_a_body_here() -> None:
    assert set(BODIES) == set(OTHER_ROUTES)


async def test_each_route_is_forwarded_unchanged(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    base, seen = gateway
    async with aiohttp.ClientSession() as s:
        for path, body in BODIES.items():
            raw = json.dumps(body).encode()
            async with s.post(base + path, data=raw) as r:
                assert r.status == 200, (path, await r.text())
                assert (await r.json())["path"] == path
                assert r.headers["x-kvgate-endpoint"]
            assert seen[-1]["path"] == path and seen[-1]["body"] == raw  # not re-encoded
            assert seen[-1]["rid"]
        # the seed's service path shape reaches the same route
        async with s.post(base + "/ns/svc/v1/embeddings", json=BODIES["/v1/embeddings"]) as r:
            assert r.status == 200 and seen[-1]["path"] == "/v1/embeddings"


async def test_model_routing_and_errors_as_for_chat(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/embeddings", json={"model": "other", "input": "x"}) as r:
            assert r.status == 404
            assert "served: m" in (await r.json())["error"]["message"]
        async with s.post(base + "/tokenize", json={"prompt": "x"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "model"
        async with s.post(base + "/v1/embeddings", data=b"{") as r:
            assert r.status == 400
        async with s.get(base + "/v1/embeddings") as r:
            assert r.status == 404


@pytest.mark.parametrize(
    ("body", "kind", "prompt"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "chat", None),
        ({"model": "m", "input": "abc"}, "completions", "abc"),
        ({"model": "m", "input": ["ab", "c"]}, "completions", "abc"),
        ({"model": "m", "query": "q", "documents": ["d"]}, "completions", "q"),
        ({"model": "m", "tokens": [1, 2]}, "completions", ""),
        ({"model": "m", "input": [1, 2]}, "completions", ""),
    ],
)
def test_routing_view(body: dict[str, object], kind: str, prompt: str | None) -> None:
    got_kind, view = routing_view(body)
    assert got_kind == kind
    if prompt is not None:
        assert view["prompt"] == prompt


def test_responses_input_becomes_messages_with_instructions_first() -> None:
    kind, view = routing_view(
        {"model": "m", "instructions": "be brief", "input": [{"role": "user", "content": "hi"}]}
    )
    assert kind == "chat"
    assert [m["role"] for m in view["messages"]] == ["system", "user"]
