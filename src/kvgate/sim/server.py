"""The simulator's HTTP server: vLLM's OpenAI API over the engine model (aiohttp + uvloop).

Routes: POST /v1/chat/completions, /v1/completions, /tokenize, /detokenize,
/reset_prefix_cache; GET /v1/models, /health, /ping, /version, /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import xxhash
from aiohttp import web

from kvgate.errors import BadRequestError, RequestError
from kvgate.gateway.openai import error_body, parse_body
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.sim import api
from kvgate.sim.engine import Engine, EngineConfig, LoraAdapter, SimRequest
from kvgate.sim.metrics import SimMetrics
from kvgate.sim.output import OutputVocab, TokenStream
from kvgate.sim.profiles import Profile
from kvgate.sim.publisher import ZmqPublisher

__all__ = ["SimSettings", "SimState", "build_app", "serve"]

log = logging.getLogger("kvgate.sim")

_enc = msgspec.json.Encoder()
FAILURE_KINDS = ("429", "500", "503", "drop", "hang")
#: A request header that forces one fault on that request (a test seam; not in vLLM).
FAULT_HEADER = "x-kvgate-sim-fault"
VLLM_VERSION = api.VLLM_VERSION


@dataclass(slots=True)
class SimSettings:
    """Everything ``kvgate sim`` was asked for, after the profile and flags are merged."""

    host: str
    port: int
    model: str
    served_model_names: list[str]
    profile: Profile
    speed: float = 1.0
    tokenizer_path: str | None = None
    mode: str = "random"
    seed: int = 0
    hash_algo: str = "sha256"
    kv_events_endpoint: str | None = None
    kv_events_topic: str | None = None
    kv_events_replay_endpoint: str | None = None
    kv_events_format: str = "map"
    kv_events_buffer_steps: int = 10_000
    kv_events_hwm: int = 100_000
    kv_offload_blocks: int = 0
    lora_modules: list[LoraAdapter] = field(default_factory=list)
    max_loras: int = 1
    failure_rate: float = 0.0
    failure_kinds: tuple[str, ...] = ("500",)
    startup_delay_s: float = 0.0
    legacy_gpu_cache_usage_metric: bool = False
    enable_prefix_caching: bool = True
    shutdown_timeout_s: float = 30.0


class SimState:
    """Per-process state shared by the handlers."""

    def __init__(self, settings: SimSettings, publisher: ZmqPublisher | None = None) -> None:
        self.settings = settings
        p = settings.profile
        self.tokenizer = (
            Tokenizer.from_path(settings.tokenizer_path)
            if settings.tokenizer_path
            else Tokenizer.default()
        )
        self.vocab = OutputVocab(self.tokenizer)
        self.publisher = publisher
        self.engine = Engine(
            EngineConfig(
                block_size=p.block_size,
                num_gpu_blocks=p.num_gpu_blocks,
                max_num_seqs=p.max_num_seqs,
                max_num_batched_tokens=p.max_num_batched_tokens,
                max_model_len=p.max_model_len,
                speed=settings.speed,
                hash_algo=settings.hash_algo,
                offload_blocks=settings.kv_offload_blocks,
                max_loras=settings.max_loras,
                enable_prefix_caching=settings.enable_prefix_caching,
            ),
            p.latency,
            publish=publisher.publish if publisher is not None else None,
        )
        self.loras = {a.name: a for a in settings.lora_modules}
        self.model_names = list(settings.served_model_names)
        self.metrics = SimMetrics(
            self.engine,
            self.model_names[0],
            cache_config=cache_config_labels(settings),
            legacy_gpu_cache_usage=settings.legacy_gpu_cache_usage_metric,
            max_loras=settings.max_loras,
            lora_names=tuple(self.loras),
        )
        self.fault_rng = random.Random(settings.seed ^ 0x5EED)
        self.created = int(time.time())
        self.inflight = 0
        self.draining = False
        self.hanging: set[asyncio.Future[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()


def cache_config_labels(s: SimSettings) -> dict[str, str]:
    """vllm:cache_config_info's labels as vLLM 0.32 exports them (vLLM's defaults where the
    simulator has no such setting)."""
    p = s.profile
    tokens = p.block_size * p.num_gpu_blocks
    return {
        "_block_size_resolved": "True",
        "block_size": str(p.block_size),
        "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None",
        "effective_attention_block_size": str(p.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False",
        "enable_prefix_caching": str(s.enable_prefix_caching),
        "gpu_memory_utilization": "0.9",
        "hash_block_size": "None",
        "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]",
        "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(round(tokens / p.max_model_len, 2)),
        "kv_cache_memory_bytes": "None",
        "kv_cache_size_tokens": str(tokens),
        "kv_offloading_backend": "native",
        "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False",
        "mamba_block_size": "None",
        "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none",
        "mamba_page_size_padded": "None",
        "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": str(s.kv_offload_blocks) if s.kv_offload_blocks else "None",
        "num_gpu_blocks": str(p.num_gpu_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0",
        "prefix_caching_hash_algo": s.hash_algo,
        "prefix_match_unit": "None",
        "replayssm_buffer_len": "16",
        "skip_page_size_padded": "None",
        "sliding_window": "None",
        "swa_bounded_replay": "True",
        "use_kda_recoverssm": "False",
        "use_replayssm": "False",
        "user_specified_block_size": "True",
    }


STATE_KEY = web.AppKey("sim_state", SimState)


def _error(exc: RequestError) -> web.Response:
    return web.Response(
        body=error_body(
            exc.message, status=exc.status, error_type=_vllm_type(exc), param=exc.param
        ),
        status=exc.status,
        content_type="application/json",
    )


def _vllm_type(exc: RequestError) -> str:
    # vLLM names the error class in "type" (BadRequestError, NotFoundError; pydantic's
    # schema errors say "Bad Request").
    if exc.status == 404:
        return "NotFoundError"
    if isinstance(exc, api.ValidationFailure):
        return exc.error_type
    if exc.status == 400:
        return "BadRequestError"
    return exc.error_type


def _plain_error(status: int, message: str, error_type: str) -> web.Response:
    return web.Response(
        body=error_body(message, status=status, error_type=error_type),
        status=status,
        content_type="application/json",
    )


# --- handlers ---------------------------------------------------------------------------------


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        return parse_body(raw)
    except BadRequestError as exc:
        raise api.ValidationFailure("", "json_invalid", "JSON decode error", {}) from exc


def _resolve_model(state: SimState, body: dict[str, Any]) -> tuple[str, LoraAdapter | None]:
    model = body.get("model")
    if model is None:
        return state.model_names[0], None
    if not isinstance(model, str):
        raise BadRequestError("'model' must be a string", param="model")
    if model in state.model_names:
        return model, None
    lora = state.loras.get(model)
    if lora is not None:
        return model, lora
    aliases = ", ".join([*state.model_names, *state.loras])
    raise api.NotFoundError(
        f"The model `{model}` does not exist. Valid aliases: {aliases}.", param="model"
    )


def _generation_seed(state: SimState, seed: int | None, prompt_ids: list[int]) -> int:
    if seed is not None:
        return (state.settings.seed * 1_000_003) ^ seed
    return xxhash.xxh64_intdigest(
        array("I", prompt_ids).tobytes(), seed=state.settings.seed & ((1 << 64) - 1)
    )


async def _completion(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if state.draining:
        return _plain_error(503, "The server is shutting down.", "ServiceUnavailableError")
    state.inflight += 1
    state.idle.clear()
    try:
        return await _completion_inner(request, state, chat=chat)
    finally:
        state.inflight -= 1
        if state.inflight == 0:
            state.idle.set()


async def _completion_inner(
    request: web.Request, state: SimState, *, chat: bool
) -> web.StreamResponse:
    settings = state.settings
    engine = state.engine
    try:
        body = _parse_json(await request.read())
        model, lora = _resolve_model(state, body)
        sampling = api.parse_sampling(body, chat=chat)
        tok = state.tokenizer
        if chat:
            messages = api.chat_messages(body)
            add_gen = body.get("add_generation_prompt", True)
            prompt_ids = tok.encode_chat(messages, add_generation_prompt=bool(add_gen))
            echo_ids: list[int] = []
            if settings.mode == "echo":
                for message in reversed(messages):
                    if message.get("role") == "user":
                        content = message.get("content")
                        if isinstance(content, list):
                            content = "".join(
                                p.get("text", "") for p in content if isinstance(p, dict)
                            )
                        echo_ids = tok.encode(content or "", add_special_tokens=False)
                        break
        else:
            prompt = api.completion_prompt(body)
            prompt_ids = tok.encode(prompt) if isinstance(prompt, str) else prompt
            echo_ids = prompt_ids
        max_model_len = engine.config.max_model_len
        api.check_context_length(
            len(prompt_ids), sampling.max_tokens, sampling.max_tokens_param, max_model_len
        )
        salt = body.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise BadRequestError("'cache_salt' must be a string", param="cache_salt")
    except RequestError as exc:
        return _error(exc)
    except Exception as exc:  # a template or tokenizer failure on odd input
        if isinstance(exc, asyncio.CancelledError):
            raise
        return _error(BadRequestError(f"could not prepare the prompt: {exc}"))

    fault = request.headers.get(FAULT_HEADER) or _draw_fault(state)
    if fault not in FAILURE_KINDS and fault is not None:
        return _error(
            BadRequestError(
                f"{FAULT_HEADER}: unknown fault {fault!r} (known: {', '.join(FAILURE_KINDS)})",
                param=FAULT_HEADER,
            )
        )
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
    )
    req.notify_each_token = sampling.stream
    state.metrics.observe_admitted(sampling.max_tokens, max_tokens)
    engine.add(req)
    writer = api.ChunkWriter(model, chat=chat)
    try:
        if sampling.stream:
            return await _stream(request, state, req, writer, sampling, drop=fault == "drop")
        return await _full(request, state, req, writer, drop=fault == "drop")
    finally:
        if not req.finished:
            engine.abort(req)


def _draw_fault(state: SimState) -> str | None:
    s = state.settings
    if s.failure_rate <= 0 or state.fault_rng.random() >= s.failure_rate:
        return None
    return state.fault_rng.choice(s.failure_kinds)


def _fault_response(kind: str) -> web.Response:
    if kind == "429":
        return _plain_error(
            429, "Injected failure: rate limit reached, retry later.", "RateLimitError"
        )
    if kind == "503":
        return _plain_error(
            503, "Injected failure: the engine is overloaded.", "ServiceUnavailableError"
        )
    return _plain_error(500, "Injected failure: internal server error.", "InternalServerError")


async def _hang(state: SimState) -> web.StreamResponse:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.hanging.add(fut)
    try:
        await fut
    finally:
        state.hanging.discard(fut)
    return _plain_error(503, "The server is shutting down.", "ServiceUnavailableError")


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
    while True:
        await req.wait_for_output()
        n = req.num_output_tokens
        done = req.finished
        parts: list[bytes] = []
        if not sent_role and (n > 0 or done):
            parts.append(writer.role())
            sent_role = True
        out = req.token_ids
        base = req.num_prompt_tokens
        for k in range(req.delivered, n):
            token = out[base + k]
            if done and k == n - 1:
                last_text = req.stream.last_text
                text = (
                    _enc.encode(last_text)
                    if last_text is not None and req.finish_reason == "stop"
                    else vocab.json(token)
                )
                usage = _usage(req, chat, full=False) if continuous else None
                parts.append(
                    writer.last(
                        text,
                        req.finish_reason or "length",
                        req.stream.stop_reason if req.finish_reason == "stop" else None,
                        fingerprint=not sampling.include_usage,
                        usage=usage,
                    )
                )
            elif continuous:
                usage = _usage(req, chat, full=False, completion=k + 1)
                parts.append(writer.token_with_usage(vocab.json(token), usage))
            else:
                parts.append(writer.token(vocab.json(token)))
        req.delivered = n
        if done:
            if sampling.include_usage:
                parts.append(writer.usage(_usage(req, chat, full=False)))
            parts.append(api.DONE)
        if parts:
            await resp.write(b"".join(parts))
        if drop and n >= drop_after:
            state.engine.abort(req)
            _drop_connection(request)
            return resp
        if done:
            break
    await resp.write_eof()
    return resp


async def _full(
    request: web.Request, state: SimState, req: SimRequest, writer: api.ChunkWriter, *, drop: bool
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
    body = writer.full("".join(texts), reason, stop_reason, _usage(req, writer.chat, full=True))
    return web.Response(body=body, content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=False)


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
        body = parse_body(await request.read())
        _resolve_model(state, body)
        tok = state.tokenizer
        if "messages" in body:
            messages = api.chat_messages(body)
            ids = tok.encode_chat(
                messages, add_generation_prompt=bool(body.get("add_generation_prompt", True))
            )
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise BadRequestError(
                    "'prompt' (a string) or 'messages' is required", param="prompt"
                )
            ids = tok.encode(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))
    except RequestError as exc:
        return _error(exc)
    strs = None
    if body.get("return_token_strs"):
        strs = [tok.hf.id_to_token(i) for i in ids]
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
        body = parse_body(await request.read())
        _resolve_model(state, body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BadRequestError("'tokens' must be an array of token ids", param="tokens")
    except RequestError as exc:
        return _error(exc)
    text = state.tokenizer.decode(tokens, skip_special_tokens=False)
    return web.Response(body=_enc.encode({"prompt": text}), content_type="application/json")


async def reset_prefix_cache(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not state.engine.reset_prefix_cache():
        return _plain_error(
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
        "lag_s": st.lag_s,
        "lag_events": st.lag_events,
        "late_s_sum": st.late_s_sum,
        "late_s_max": st.late_s_max,
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
    }
    return web.Response(body=_enc.encode(out), content_type="application/json")


def build_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
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
        )
        publisher.start()
    state = SimState(settings, publisher)
    app = build_app(state)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
    await site.start()
    engine_task = loop.create_task(state.engine.run())
    log.info(
        "kvgate sim serving %s on http://%s:%d",
        ", ".join(state.model_names),
        settings.host,
        settings.port,
    )
    if ready is not None:
        res = ready(f"http://{settings.host}:{settings.port}")
        if res is not None:
            await res
    try:
        await stop.wait()
    finally:
        # Graceful shutdown: stop listening, refuse new requests, finish in-flight streams.
        state.draining = True
        server = getattr(site, "_server", None)
        if server is not None:
            server.close()
        for fut in list(state.hanging):
            if not fut.done():
                fut.set_result(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.idle.wait(), settings.shutdown_timeout_s)
        state.engine.stop()
        engine_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine_task
        await runner.cleanup()
        if publisher is not None:
            await publisher.close()


def _topic_host(settings: SimSettings) -> str:
    import os

    if settings.host in ("0.0.0.0", "::", ""):
        return os.environ.get("POD_IP", "127.0.0.1")
    return settings.host
