"""Settings and per-process state of ``kvgate sim``, and the helpers every route shares
(error responses in vLLM's shape, JSON body parsing, model-name resolution)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kvgate.errors import BadRequestError, PayloadTooLargeError, RequestError
from kvgate.kvcache.tokenize import Tokenizer
from kvgate.openai import error_body, parse_body
from kvgate.sim import api
from kvgate.sim.encoder import ECTransferConfig, EncoderCache
from kvgate.sim.engine import Engine, EngineConfig, LoraAdapter
from kvgate.sim.kvtransfer import KVTransferConfig
from kvgate.sim.metrics import SimMetrics
from kvgate.sim.output import OutputVocab
from kvgate.sim.profiles import Profile
from kvgate.sim.prompts import PromptEncoder
from kvgate.sim.publisher import PublishFaults, ZmqPublisher
from kvgate.sim.tls import TlsSettings

__all__ = [
    "FAILURE_KINDS",
    "FAULT_HEADER",
    "STATE_KEY",
    "SimSettings",
    "SimState",
    "error_response",
    "parse_json",
    "plain_error",
    "read_json",
    "resolve_model",
]

FAILURE_KINDS = ("429", "500", "503", "drop", "hang")
#: The largest request body read (aiohttp's client_max_size); a larger declared length is
#: refused before any of it is read.
MAX_BODY_BYTES = 64 * 1024 * 1024
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
    stream_interval: int = 1  # tokens per streamed chunk (vLLM's --stream-interval)
    emit_lead_max_s: float = 0.005  # EngineConfig.emit_lead_max_s
    seed: int = 0
    hash_algo: str = "sha256"
    kv_events_endpoint: str | None = None
    kv_events_topic: str | None = None
    kv_events_replay_endpoint: str | None = None
    kv_events_format: str = "map"
    kv_events_buffer_steps: int = 10_000
    kv_events_hwm: int = 100_000
    kv_events_fault: PublishFaults = field(default_factory=PublishFaults)  # --kv-events-fault
    kv_offload_blocks: int = 0
    lora_modules: list[LoraAdapter] = field(default_factory=list)
    #: --enable-lora (or --lora-modules): vllm:lora_requests_info is exported, as vLLM does
    #: whenever it has a LoRA config, adapters running or not.
    lora_enabled: bool = False
    max_loras: int = 1
    failure_rate: float = 0.0
    failure_kinds: tuple[str, ...] = ("500",)
    startup_delay_s: float = 0.0
    legacy_gpu_cache_usage_metric: bool = False
    enable_prefix_caching: bool = True
    shutdown_timeout_s: float = 30.0
    #: --read-timeout: a request (head and body) must arrive within this long of its first
    #: byte, and a new connection's first one within this long of the accept.
    read_timeout_s: float = 30.0
    kv_transfer: KVTransferConfig | None = None  # --kv-transfer-config (P/D)
    ec_transfer: ECTransferConfig | None = None  # --ec-transfer-config (E/P/D)
    mm_encode_ms: float = 20.0  # --mm-encode-ms: model ms to encode one multimodal part
    mm_encoder_cache_items: int = 256  # --mm-encoder-cache-items: encoded parts kept
    tls: TlsSettings | None = None  # --ssl-certfile and friends: HTTPS (kvgate.sim.tls)


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
        #: Every prompt is tokenized through this (chunk cache; long prompts off the loop).
        self.prompts = PromptEncoder(self.tokenizer)
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
                emit_lead_max_s=settings.emit_lead_max_s,
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
            lora_enabled=settings.lora_enabled,
        )
        #: multimodal parts' encode cost and the EC store (kvgate.sim.encoder)
        self.encoder = EncoderCache(
            settings.mm_encode_ms, settings.mm_encoder_cache_items, settings.ec_transfer
        )
        self.metrics.encoder_counts = self.encoder.counts
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


class RequestTimeoutError(RequestError):
    """The request body did not arrive within ``--read-timeout``."""

    status = 408
    error_type = "RequestTimeoutError"


def error_response(exc: RequestError) -> web.Response:
    resp = web.Response(
        body=error_body(
            exc.message, status=exc.status, error_type=_vllm_type(exc), param=exc.param
        ),
        status=exc.status,
        content_type="application/json",
    )
    if isinstance(exc, PayloadTooLargeError | RequestTimeoutError):
        resp.force_close()  # the rest of the body is not read: the connection cannot go on
    return resp


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


def plain_error(status: int, message: str, error_type: str) -> web.Response:
    return web.Response(
        body=error_body(message, status=status, error_type=error_type),
        status=status,
        content_type="application/json",
    )


# --- handlers ---------------------------------------------------------------------------------


async def read_json(request: web.Request, state: SimState) -> dict[str, Any]:
    """The request's JSON object, read within ``--read-timeout`` of the request's first byte
    and at most :data:`MAX_BODY_BYTES` long (413 at once when the declared length is larger)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLargeError(
            f"the request body is {length} bytes; at most {MAX_BODY_BYTES} are accepted"
        )
    if request.content.is_eof():  # the whole body is here (the usual case): no timer needed
        return parse_json(await request.read())
    transport = request.transport
    started = getattr(transport, "rx_start", 0.0) or time.monotonic()
    left_s = started + state.settings.read_timeout_s - time.monotonic()
    try:
        async with asyncio.timeout(max(left_s, 0.001)):
            raw = await request.read()
    except TimeoutError as exc:
        raise RequestTimeoutError(
            f"the request body did not arrive within {state.settings.read_timeout_s:g}s"
        ) from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLargeError(
            f"the request body is over {MAX_BODY_BYTES} bytes, the most accepted"
        ) from exc
    return parse_json(raw)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        return parse_body(raw)
    except BadRequestError as exc:
        raise api.ValidationFailure("", "json_invalid", "JSON decode error", {}) from exc


def resolve_model(state: SimState, body: dict[str, Any]) -> tuple[str, LoraAdapter | None]:
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
