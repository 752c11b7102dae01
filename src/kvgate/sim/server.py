"""The simulator's HTTP server: vLLM's OpenAI API over the engine model (aiohttp + uvloop).

Routes: POST /v1/chat/completions, /v1/completions (:mod:`kvgate.sim.completions`),
/tokenize, /detokenize, /reset_prefix_cache; GET /v1/models, /health, /ping, /version,
/metrics, /sim/stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kvgate.errors import BadRequestError, EngineError, RequestError
from kvgate.sim import api, wire
from kvgate.sim.completions import chat_completions, completions
from kvgate.sim.publisher import ZmqPublisher
from kvgate.sim.state import (
    FAILURE_KINDS,
    FAULT_HEADER,
    MAX_BODY_BYTES,
    STATE_KEY,
    SimSettings,
    SimState,
    error_response,
    plain_error,
    read_json,
    resolve_model,
)
from kvgate.sim.tls import CertRefresher, server_context

__all__ = ["FAILURE_KINDS", "FAULT_HEADER", "SimSettings", "SimState", "build_app", "serve"]

log = logging.getLogger("kvgate.sim")

_enc = msgspec.json.Encoder()
VLLM_VERSION = api.VLLM_VERSION


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    max_len = state.engine.config.max_model_len
    data: list[dict[str, Any]] = []
    for name in state.model_names:
        data.append(_model_card(name, state.settings.model, None, max_len, state.created))
    for lora in state.loras.values():
        data.append(_model_card(lora.name, lora.path, state.model_names[0], None, state.created))
    return web.Response(
        body=_enc.encode({"object": "list", "data": data}), content_type="application/json"
    )


def _model_card(
    name: str, root: str, parent: str | None, max_len: int | None, created: int
) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [
            {
                "id": f"modelperm-{name}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.draining:
        return web.Response(status=503)
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return web.Response(
        body=_enc.encode({"version": VLLM_VERSION}), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(
        body=state.metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def tokenize(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await read_json(request, state)
        resolve_model(state, body)
        if "messages" in body:
            messages = api.chat_messages(body)
            ids = await state.prompts.encode_chat(
                messages, add_generation_prompt=bool(body.get("add_generation_prompt", True))
            )
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise BadRequestError(
                    "'prompt' (a string) or 'messages' is required", param="prompt"
                )
            ids = await state.prompts.encode(
                prompt, add_special_tokens=bool(body.get("add_special_tokens", True))
            )
    except RequestError as exc:
        return error_response(exc)
    strs = None
    if body.get("return_token_strs"):
        strs = [state.tokenizer.hf.id_to_token(i) for i in ids]
    out = {
        "count": len(ids),
        "max_model_len": state.engine.config.max_model_len,
        "tokens": ids,
        "token_strs": strs,
    }
    return web.Response(body=_enc.encode(out), content_type="application/json")


async def detokenize(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await read_json(request, state)
        resolve_model(state, body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BadRequestError("'tokens' must be an array of token ids", param="tokens")
    except RequestError as exc:
        return error_response(exc)
    text = state.tokenizer.decode(tokens, skip_special_tokens=False)
    return web.Response(body=_enc.encode({"prompt": text}), content_type="application/json")


async def reset_prefix_cache(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not state.engine.reset_prefix_cache():
        return plain_error(
            400, "Cannot reset the prefix cache while requests hold blocks.", "BadRequestError"
        )
    return web.Response(status=200)


async def sim_stats(request: web.Request) -> web.Response:
    """kvgate's own engine counters (not a vLLM route): steps, modelled busy time, lateness."""
    state = request.app[STATE_KEY]
    st = state.engine.stats
    out = {
        "steps": st.steps,
        "busy_model_s": st.busy_model_s,
        # Schedule restarts (kvgate_sim_schedule_lag_seconds' _sum, _count and largest one).
        "lag_s": st.lag_s,
        "lag_events": st.lag_events,
        "lag_s_max": st.lag_s_max,
        # HTTP receipt -> engine (read, parse, tokenize): absorbed while the engine is idle.
        "intake_s_sum": st.intake_s_sum,
        "intake_count": st.intake_count,
        "late_s_sum": st.late_s_sum,
        "late_s_max": st.late_s_max,
        # Streamed tokens written, the sum of their errors against the model (wall s), and
        # how far ahead of plan steps now complete to make up for writing them out.
        "emit_count": st.emit_count,
        "emit_error_s_sum": st.emit_error_s_sum,
        "emit_first_count": st.emit_first_count,
        "emit_first_error_s_sum": st.emit_first_error_s_sum,
        "emit_lead_s": state.engine.lead_decode.last,
        "emit_lead_first_s": state.engine.lead_first.last,
        "model_ttft_s_sum": st.model_ttft_s_sum,
        "model_ttft_count": st.model_ttft_count,
        "model_itl_s_sum": st.model_itl_s_sum,
        "model_itl_count": st.model_itl_count,
        "preemptions": st.preemptions,
        "running": state.engine.num_running,
        "waiting": state.engine.num_waiting,
        "kv_free_blocks": state.engine.kv.num_free_blocks,
        "kv_cached_blocks": len(state.engine.kv.cached),
        "kv_cpu_blocks": len(state.engine.kv.cpu),
        "speed": state.engine.config.speed,
        # Prompt tokenization: chunk-cache hits and misses, prompts encoded off the loop.
        "tokenize_chunk_hits": state.prompts.chunked.hits,
        "tokenize_chunk_misses": state.prompts.chunked.misses,
        "tokenize_offloaded": state.prompts.num_offloaded,
        # KV-event batches published so far (the last one's seq is this minus one).
        "kv_event_batches": state.publisher.num_batches if state.publisher is not None else 0,
        # Messages the PUB sent (a duplicated batch counts twice, a dropped one not at all),
        # batches held back by a reorder fault, and the faults applied (--kv-events-fault).
        **_kv_event_faults(state.publisher),
        # Subscriptions the publisher has seen (a router listens once this is above 0).
        "kv_event_subscriptions": (
            state.publisher.subscriptions() if state.publisher is not None else 0
        ),
    }
    return web.Response(body=_enc.encode(out), content_type="application/json")


def _kv_event_faults(publisher: ZmqPublisher | None) -> dict[str, int]:
    if publisher is None:
        return {}
    return {
        "kv_event_messages_sent": publisher.num_messages_sent,
        "kv_event_held": publisher.held,
        "kv_event_dropped": publisher.num_dropped,
        "kv_event_duplicated": publisher.num_duplicated,
        "kv_event_reordered": publisher.num_reordered,
    }


class OneLineLogger(logging.Logger):
    """aiohttp's per-connection logger: a malformed request (an oversized header, bad framing)
    is one warning line, not an error with a traceback, so a hostile client cannot fill the log."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        # only the client's fault is shortened: a handler's failure keeps its traceback
        if isinstance(exc_info, HttpProcessingError):
            self.warning("%s: %s", str(msg) % args, " ".join(str(exc_info).split())[:300])
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)


def _http_logger() -> OneLineLogger:
    logger = OneLineLogger("kvgate.sim.http")
    logger.parent = log
    return logger


def build_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    app.router.add_get("/sim/stats", sim_stats)
    return app


async def serve(
    settings: SimSettings, *, ready: Callable[[str], Awaitable[None] | None] | None = None
) -> None:
    """Run one simulated replica until SIGTERM/SIGINT, then drain in-flight requests."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if settings.startup_delay_s > 0:
        # vLLM does not listen until the model is loaded: refuse connections meanwhile.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.startup_delay_s)
        if stop.is_set():
            return
    publisher = None
    if settings.kv_events_endpoint:
        topic = (
            settings.kv_events_topic
            or f"kv@{_topic_host(settings)}:{settings.port}@{settings.served_model_names[0]}"
        )
        publisher = ZmqPublisher(
            settings.kv_events_endpoint,
            topic,
            layout="array" if settings.kv_events_format == "array" else "map",
            replay_endpoint=settings.kv_events_replay_endpoint,
            buffer_steps=settings.kv_events_buffer_steps,
            hwm=settings.kv_events_hwm,
            faults=settings.kv_events_fault,
            seed=settings.seed,
        )
        publisher.start()
    state = SimState(settings, publisher)
    app = build_app(state)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, logger=_http_logger())
    await runner.setup()
    assert runner.server is not None
    listener: wire.StampedServer | asyncio.Server
    refresher: CertRefresher | None = None
    if settings.tls is not None:
        # HTTPS, as vLLM's --ssl-* flags: asyncio's TLS transport (kvgate.sim.tls).
        ctx = server_context(settings.tls)
        listener = await loop.create_server(
            runner.server, settings.host, settings.port, ssl=ctx, backlog=4096, reuse_address=True
        )
        if settings.tls.refresh:
            refresher = CertRefresher(ctx, settings.tls)
            refresher.start()
    else:
        # Its own listener (not aiohttp's TCPSite), so that every request carries the time its
        # bytes reached the host: the model's TTFT counts from there (kvgate.sim.wire).
        listener = await wire.start_server(
            runner.server,
            settings.host,
            settings.port,
            backlog=4096,
            head_timeout_s=settings.read_timeout_s,
        )
    scheme = "https" if settings.tls is not None else "http"
    engine_task = loop.create_task(state.engine.run())
    engine_failure: list[BaseException] = []

    def engine_done(task: asyncio.Task[None]) -> None:
        # The engine loop never ends on its own; if it fails, stop serving loudly rather
        # than leave every request waiting.
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("engine loop failed", exc_info=exc)
            engine_failure.append(exc)
            stop.set()

    engine_task.add_done_callback(engine_done)
    log.info(
        "kvgate sim serving %s on %s://%s:%d",
        ", ".join(state.model_names),
        scheme,
        settings.host,
        settings.port,
    )
    if ready is not None:
        res = ready(f"{scheme}://{settings.host}:{settings.port}")
        if res is not None:
            await res
    try:
        await stop.wait()
    finally:
        # Graceful shutdown: stop listening, refuse new requests, finish in-flight streams.
        state.draining = True
        listener.close()
        if refresher is not None:
            await refresher.stop()
        for fut in list(state.hanging):
            if not fut.done():
                fut.set_result(None)
        if not engine_failure:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.idle.wait(), settings.shutdown_timeout_s)
        state.engine.stop()
        engine_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await engine_task  # its failure, if any, was logged and is raised below
        await runner.cleanup()
        state.prompts.close()
        if publisher is not None:
            await publisher.close()
    if engine_failure:
        raise EngineError(f"kvgate sim: the engine loop failed: {engine_failure[0]!r}")


def _topic_host(settings: SimSettings) -> str:
    if settings.host in ("0.0.0.0", "::", ""):
        return os.environ.get("POD_IP", "127.0.0.1")
    return settings.host
