"""POST /v1/chat/completions and /v1/completions: validate, tokenize, run through the engine,
answer streamed (pre-encoded SSE chunks) or whole; inject faults when asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from typing import Any

import msgspec
import xxhash
from aiohttp import web

from kvgate.errors import BadRequestError, RequestError
from kvgate.openai.multimodal import mm_items
from kvgate.sim import api
from kvgate.sim.engine import SimRequest
from kvgate.sim.output import TokenStream
from kvgate.sim.state import (
    FAILURE_KINDS,
    FAULT_HEADER,
    STATE_KEY,
    SimState,
    error_response,
    plain_error,
    read_json,
    resolve_model,
)

__all__ = ["chat_completions", "completions"]

log = logging.getLogger("kvgate.sim")

_enc = msgspec.json.Encoder()


def _generation_seed(state: SimState, seed: int | None, prompt_ids: list[int]) -> int:
    if seed is not None:
        return (state.settings.seed * 1_000_003) ^ seed
    return xxhash.xxh64_intdigest(
        array("I", prompt_ids).tobytes(), seed=state.settings.seed & ((1 << 64) - 1)
    )


async def _completion(request: web.Request, *, chat: bool) -> web.StreamResponse:
    # vLLM's arrival_time: the model's TTFT counts from when the request's first bytes reached
    # the host (the kernel's stamp, kept by kvgate.sim.wire), so the time this process spends
    # before a handler runs is inside the model, not added to it. Without a stamp: now.
    arrival = time.monotonic()
    stamp = getattr(request.transport, "rx_start", 0.0)
    if 0.0 < stamp <= arrival:
        arrival = stamp
    state = request.app[STATE_KEY]
    if state.draining:
        return plain_error(503, "The server is shutting down.", "ServiceUnavailableError")
    state.inflight += 1
    state.idle.clear()
    try:
        return await _completion_inner(request, state, arrival, chat=chat)
    finally:
        state.inflight -= 1
        if state.inflight == 0:
            state.idle.set()


async def _completion_inner(
    request: web.Request, state: SimState, arrival: float, *, chat: bool
) -> web.StreamResponse:
    settings = state.settings
    engine = state.engine
    try:
        body = await read_json(request, state)
        model, lora = resolve_model(state, body)
        sampling = api.parse_sampling(body, chat=chat)
        prompts = state.prompts
        if chat:
            messages = api.chat_messages(body)
            items = mm_items(messages)
            add_gen = body.get("add_generation_prompt", True)
            prompt_ids = await prompts.encode_chat(messages, add_generation_prompt=bool(add_gen))
            echo_ids: list[int] = []
            if settings.mode == "echo":
                for message in reversed(messages):
                    if message.get("role") == "user":
                        content = message.get("content")
                        if isinstance(content, list):
                            content = "".join(
                                p.get("text", "") for p in content if isinstance(p, dict)
                            )
                        echo_ids = await prompts.encode(content or "", add_special_tokens=False)
                        break
        else:
            items = ()
            prompt = api.completion_prompt(body)
            if isinstance(prompt, str):
                prompt_ids = await prompts.encode(prompt)
            else:
                api.check_token_ids(prompt, state.tokenizer.vocab_size)
                prompt_ids = prompt
            echo_ids = prompt_ids
        max_model_len = engine.config.max_model_len
        api.check_context_length(
            len(prompt_ids), sampling.max_tokens, sampling.max_tokens_param, max_model_len
        )
        salt = body.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise BadRequestError("'cache_salt' must be a string", param="cache_salt")
    except RequestError as exc:
        return error_response(exc)
    except Exception as exc:  # a template or tokenizer failure on odd input
        if isinstance(exc, asyncio.CancelledError):
            raise
        return error_response(BadRequestError(f"could not prepare the prompt: {exc}"))

    try:
        remote_decode, remote_prefill = _kv_transfer_request(state, body)
    except RequestError as exc:
        return error_response(exc)

    fault = request.headers.get(FAULT_HEADER) or _draw_fault(state)
    if fault not in FAILURE_KINDS and fault is not None:
        return error_response(
            BadRequestError(
                f"{FAULT_HEADER}: unknown fault {fault!r} (known: {', '.join(FAILURE_KINDS)})",
                param=FAULT_HEADER,
            )
        )
    if fault is not None:
        # One line per fault, so a harness can count what it injected even after a SIGKILL.
        log.info("injected fault: %s", fault)
    if fault in ("429", "500", "503"):
        return _fault_response(fault)
    if fault == "hang":
        return await _hang(state)

    limit = max_model_len - len(prompt_ids)
    max_tokens = sampling.max_tokens if sampling.max_tokens is not None else limit
    stream_ids = TokenStream(
        state.vocab,
        mode=settings.mode,
        seed=_generation_seed(state, sampling.seed, prompt_ids),
        max_tokens=max_tokens,
        echo_ids=echo_ids,
        natural_length=sampling.max_tokens is None,
        stop=sampling.stop,
        ignore_eos=sampling.ignore_eos,
    )
    if not stream_ids.ids:
        stream_ids.ids = [state.vocab.word_ids[0]]
    req = SimRequest(
        request_id=request.headers.get("x-request-id") or "",
        prompt_token_ids=prompt_ids,
        stream=stream_ids,
        max_tokens=max_tokens,
        lora=lora,
        cache_salt=salt,
        arrival_time=arrival,
    )
    req.notify_each_token = sampling.stream
    # text requests skip this (no encoder work, no await), and so does a P/D decode leg: the
    # prompt's KV, images included, comes from the prefill replica
    if items and remote_prefill is None:
        encode_s = state.encoder.prepare(items)
        if encode_s > 0:
            await asyncio.sleep(encode_s / settings.speed)
    if remote_prefill is not None:
        await _pull_kv(state, req, remote_prefill)
    state.metrics.observe_admitted(sampling.max_tokens, max_tokens)
    engine.add(req)
    writer = api.ChunkWriter(model, chat=chat)
    try:
        if sampling.stream:
            return await _stream(request, state, req, writer, sampling, drop=fault == "drop")
        return await _full(
            request, state, req, writer, drop=fault == "drop", remote_decode=remote_decode
        )
    finally:
        if not req.finished:
            engine.abort(req)


def _kv_transfer_request(
    state: SimState, body: dict[str, Any]
) -> tuple[bool, dict[str, Any] | None]:
    """(is a P/D prefill leg, the decode leg's params or None) from ``kv_transfer_params``.

    Without ``--kv-transfer-config`` the field is ignored, as vLLM ignores it without a KV
    connector; with one, a leg the replica's ``kv_role`` cannot serve is a 400."""
    kvt = state.settings.kv_transfer
    params = body.get("kv_transfer_params")
    if kvt is None or params is None:
        return False, None
    if not isinstance(params, dict):
        raise BadRequestError("'kv_transfer_params' must be an object", param="kv_transfer_params")
    remote_decode = params.get("do_remote_decode") is True
    remote_prefill = params.get("do_remote_prefill") is True
    if remote_decode and not kvt.is_producer:
        raise BadRequestError(
            f"kv_transfer_params.do_remote_decode: this replica's kv_role is {kvt.kv_role}",
            param="kv_transfer_params",
        )
    if remote_prefill and not kvt.is_consumer:
        raise BadRequestError(
            f"kv_transfer_params.do_remote_prefill: this replica's kv_role is {kvt.kv_role}",
            param="kv_transfer_params",
        )
    return remote_decode, params if remote_prefill else None


async def _pull_kv(state: SimState, req: SimRequest, params: dict[str, Any]) -> None:
    """The decode leg's wait for the prompt's KV: the blocks not held here cross the link.

    vLLM's consumer pulls every remote block beyond its local prefix hit; an empty
    ``remote_block_ids`` (a prompt shorter than a block) transfers nothing."""
    kvt = state.settings.kv_transfer
    assert kvt is not None
    engine = state.engine
    n = req.num_prompt_tokens
    blocks = params.get("remote_block_ids")
    delivered = (
        n if not isinstance(blocks, list) else min(n, len(blocks) * engine.config.block_size)
    )
    if delivered <= 0:
        return
    pulled = max(0, delivered - engine.cached_prefix_tokens(req))
    req.num_external_tokens = delivered
    wait_s = kvt.transfer_s(pulled, state.settings.profile.kv_bytes_per_token)
    if wait_s > 0:
        await asyncio.sleep(wait_s / state.settings.speed)


def _draw_fault(state: SimState) -> str | None:
    s = state.settings
    if s.failure_rate <= 0 or state.fault_rng.random() >= s.failure_rate:
        return None
    return state.fault_rng.choice(s.failure_kinds)


def _fault_response(kind: str) -> web.Response:
    if kind == "429":
        return plain_error(
            429, "Injected failure: rate limit reached, retry later.", "RateLimitError"
        )
    if kind == "503":
        return plain_error(
            503, "Injected failure: the engine is overloaded.", "ServiceUnavailableError"
        )
    return plain_error(500, "Injected failure: internal server error.", "InternalServerError")


async def _hang(state: SimState) -> web.StreamResponse:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.hanging.add(fut)
    try:
        await fut
    finally:
        state.hanging.discard(fut)
    return plain_error(503, "The server is shutting down.", "ServiceUnavailableError")


def _usage(
    req: SimRequest, chat: bool, *, full: bool, completion: int | None = None
) -> dict[str, Any]:
    """vLLM 0.32's usage object: chat reports created_cache_tokens, completions do not;
    the non-streaming body carries more (null) fields than the streamed usage chunk."""
    done = req.num_output_tokens if completion is None else completion
    cached = max(req.num_cached_tokens, 0)
    if chat:
        return api.chat_usage(
            req.num_prompt_tokens, done, cached, req.num_created_cache_tokens, full=full
        )
    return api.completion_usage(req.num_prompt_tokens, done, cached, full=full)


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _stream(
    request: web.Request,
    state: SimState,
    req: SimRequest,
    writer: api.ChunkWriter,
    sampling: api.ParsedRequest,
    *,
    drop: bool,
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    vocab = state.vocab
    chat = writer.chat
    sent_role = not chat
    drop_after = max(1, len(req.stream.ids) // 2) if drop else -1
    continuous = sampling.include_usage and sampling.continuous_usage
    # vLLM's stream_interval: the request may raise the server's --stream-interval, not lower it
    interval = max(state.settings.stream_interval, sampling.stream_interval or 1)
    sent = 0  # output tokens written to the client (req.delivered: tokens seen)
    while True:
        await req.wait_for_output()
        n = req.num_output_tokens
        req.delivered = n
        done = req.finished
        # Hold tokens until ``interval`` are ready; the first and the last output go at once
        # (vllm/v1/engine/output_processor.py).
        if not done and sent > 0 and n - sent < interval:
            continue
        parts: list[bytes] = []
        if not sent_role and (n > 0 or done):
            parts.append(writer.role())
            sent_role = True
        # one chunk per token, or one for all held tokens (their texts joined, as vLLM's delta)
        spans = [(k, k + 1) for k in range(sent, n)] if interval == 1 else [(sent, n)]
        out = req.token_ids  # prompt ids, then output ids
        base = req.num_prompt_tokens
        for a, b in spans:
            if a >= b:
                continue
            if done and b == n:
                texts = [vocab.text(t) for t in out[base + a : base + b]]
                last_text = req.stream.last_text
                if last_text is not None and req.finish_reason == "stop":
                    texts[-1] = last_text
                usage = _usage(req, chat, full=False) if continuous else None
                parts.append(
                    writer.last(
                        _enc.encode("".join(texts)),
                        req.finish_reason or "length",
                        req.stream.stop_reason if req.finish_reason == "stop" else None,
                        fingerprint=not sampling.include_usage,
                        usage=usage,
                    )
                )
                continue
            text = (
                vocab.json(out[base + a])
                if b - a == 1
                else _enc.encode("".join(vocab.text(t) for t in out[base + a : base + b]))
            )
            if continuous:
                parts.append(
                    writer.token_with_usage(text, _usage(req, chat, full=False, completion=b))
                )
            else:
                parts.append(writer.token(text))
        fresh = n > sent  # new tokens go out in this write
        first = fresh and sent == 0
        sent = n
        if done:
            if sampling.include_usage:
                parts.append(writer.usage(_usage(req, chat, full=False)))
            parts.append(api.DONE)
        if parts:
            try:
                await resp.write(b"".join(parts))
            except ConnectionResetError:
                return resp  # the client went away; the caller aborts the request
            transport = request.transport
            if fresh and transport is not None and not transport.get_write_buffer_size():
                # How late (or early) the newest token left, against the model: the engine
                # completes steps ahead by the mean of these (Engine.observe_emit). Not when
                # the bytes wait in the buffer: a slow reader is not the process's delay.
                state.engine.observe_emit(req, time.monotonic() - req.model_token_time, first=first)
        if drop and n >= drop_after:
            state.engine.abort(req)
            _drop_connection(request)
            return resp
        if done:
            break
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _full(
    request: web.Request,
    state: SimState,
    req: SimRequest,
    writer: api.ChunkWriter,
    *,
    drop: bool,
    remote_decode: bool = False,
) -> web.StreamResponse:
    if drop:
        req.notify_each_token = True
        while not req.finished:
            req.delivered = req.num_output_tokens
            await req.wait_for_output()
            if req.num_output_tokens > 0:
                state.engine.abort(req)
                _drop_connection(request)
                return web.Response(status=500)
    await req.wait_finished()
    vocab = state.vocab
    outputs = req.output_token_ids
    texts = [vocab.text(t) for t in outputs]
    if req.finish_reason == "stop" and req.stream.last_text is not None and texts:
        texts[-1] = req.stream.last_text
    reason = req.finish_reason or "length"
    stop_reason = req.stream.stop_reason if reason == "stop" else None
    kv_params = None
    kvt = state.settings.kv_transfer
    if remote_decode and kvt is not None and reason in ("length", "stop"):
        # vLLM's NIXL producer: the finished prefill's blocks, for the decode side to pull
        kv_params = kvt.producer_params(req.request_id or writer.id, req.finished_block_ids)
    body = writer.full(
        "".join(texts), reason, stop_reason, _usage(req, writer.chat, full=True), kv_params
    )
    return web.Response(body=body, content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=False)
