"""passthrough-parser through both front doors: bodies are forwarded unread, byte for byte,
and requests are scheduled without a model or prompt (a real ``kvgate serve`` over an echoing
model server, a real ``kvgate epp`` spoken to as Envoy would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from extproc.epp_rig import BASE, body_msg, exchange, headers_msg, open_epp, set_headers
from gateway.test_other_routes import _echo_server
from kvgate.config import load_picker_config
from kvgate.errors import ConfigError
from requestcontrol.test_control import begin, make_control
from support.procs import Proc, free_port, kvgate_cmd

PASSTHROUGH = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: random-picker
- type: passthrough-parser
- type: prefix-cache-scorer
requestHandler:
  parsers:
  - pluginRef: passthrough-parser
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: random-picker
"""
#: Neither JSON nor OpenAI: the OpenAI parser would answer 400.
RAW = b"\x00raw payload {not json"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """``kvgate serve`` with PASSTHROUGH before a model server that lists only 'm' and
    records what each POST carried."""
    runner, up_port, seen = await _echo_server()
    port = free_port()
    cmd = kvgate_cmd(
        "serve",
        "--endpoint",
        f"http://127.0.0.1:{up_port}",
        "--port",
        str(port),
        "--config-text",
        PASSTHROUGH,
    )
    proc = Proc(cmd, tmp_path / "gateway.log")
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/ready", 60)
        yield f"http://127.0.0.1:{port}", seen
    finally:
        proc.stop()
        await runner.cleanup()


async def test_the_gateway_forwards_unparsed_bodies_to_the_path_asked(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    base, seen = gateway
    other_model = b'{"model": "not-served", "messages": []}'  # the OpenAI path: 404 / 400
    async with aiohttp.ClientSession() as s:
        for path, raw in (
            ("/v1/chat/completions", RAW),
            ("/v1/completions", other_model),
            ("/v1/embeddings", RAW),
        ):
            async with s.post(base + path, data=raw) as r:
                assert r.status == 200, (path, await r.text())
                assert (await r.json())["path"] == path
                assert r.headers["x-kvgate-endpoint"]
            assert (seen[-1]["path"], seen[-1]["body"]) == (path, raw)


@pytest.mark.parametrize("grpc_server", ["h2"])
async def test_the_epp_routes_an_unparsed_body_and_leaves_it_alone(grpc_server: str) -> None:
    async with open_epp(grpc_server, config_text=PASSTHROUGH) as epp:
        msgs = [headers_msg({**BASE, ":path": "/v1/chat/completions"}), body_msg(RAW)]
        replies, call = await exchange(epp, msgs, expect=2)
        assert set_headers(replies[0])["x-gateway-destination-endpoint"] in epp.endpoints
        sent = replies[1].request_body.response.body_mutation.streamed_response.body
        assert sent == RAW  # re-sent as received (full duplex), never re-encoded
        await call.done_writing()


def test_passthrough_must_be_the_only_parser() -> None:
    text = PASSTHROUGH.replace(
        "- type: passthrough-parser\n", "- type: passthrough-parser\n- type: openai-parser\n"
    ).replace(
        "  - pluginRef: passthrough-parser\n",
        "  - pluginRef: passthrough-parser\n  - pluginRef: openai-parser\n",
    )
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=text)
    problem = info.value.problems[0]
    assert (problem.path, problem.message) == (
        "requestHandler.parsers",
        "'passthrough-parser' (passthrough-parser) must be the only parser: kvgate either "
        "parses every body as OpenAI or none; remove the others",
    )
    handler = load_picker_config(text=PASSTHROUGH).request_handler
    assert handler is not None and handler.passthrough


def test_requests_carry_no_model_or_prompt_and_headers_still_act() -> None:
    """No model narrows the candidates (the endpoints serve only 'm'), the prefix scorer sees
    no tokens (0 everywhere), the fairness header and the request id still count."""
    control = make_control(PASSTHROUGH, models={"ep0": {"m"}, "ep1": {"m"}})
    ctx = begin(control, RAW, **{"x-llm-d-inference-fairness-id": "t", "x-request-id": "r9"})
    assert ctx.request is not None and ctx.request.request_id == "r9"
    assert (ctx.request.model, ctx.request.token_ids, ctx.fairness_id) == ("", (), "t")
    candidates = control.candidates(ctx)
    assert {e.name for e in candidates} == {"ep0", "ep1"}
    result = control.schedule(ctx, candidates)
    assert [s.scores["prefix-cache-scorer"] for s in result.primary.scored] == [0.0, 0.0]
