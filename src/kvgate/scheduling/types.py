"""The nouns the scheduler works on: requests, endpoints, their metrics, and per-cycle results.

Everything here is plain data without I/O. The gateway and the ext_proc server build a
:class:`Request` from the client's body and headers; the endpoint pool keeps one
:class:`Endpoint` per model-server rank and replaces its :class:`Metrics` snapshot on every
scrape; plugins read both and write only to the :class:`CycleState` of the current cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

# Header names kvgate reads or writes. Client-sent copies of the routing headers are stripped
# at the edge so that they can never steer a request.
HEADER_REQUEST_ID = "x-request-id"
HEADER_SESSION_TOKEN = "x-session-token"
HEADER_DESTINATION = "x-gateway-destination-endpoint"
HEADER_DESTINATION_SUBSET = "x-gateway-destination-endpoint-subset"
HEADER_DESTINATION_FALLBACK = "x-gateway-destination-endpoint-fallback"
HEADER_DESTINATION_SERVED = "x-gateway-destination-endpoint-served"
HEADER_MODEL_REWRITE = "x-gateway-model-name-rewrite"
HEADER_OBJECTIVE = "x-gateway-inference-objective"
HEADER_FAIRNESS_ID = "x-gateway-inference-fairness-id"
HEADER_PREFILLER = "x-prefiller-host-port"
HEADER_DATA_PARALLEL = "x-data-parallel-host-port"
#: llm-d's header for the encode (E) stage's endpoints, comma-joined ``ip:port``s.
HEADER_ENCODERS = "x-encoder-hosts-ports"

#: Headers a client must never be able to set: they decide where a request goes.
ROUTING_HEADERS: frozenset[str] = frozenset(
    {
        HEADER_DESTINATION,
        HEADER_DESTINATION_SUBSET,
        HEADER_DESTINATION_FALLBACK,
        HEADER_DESTINATION_SERVED,
        HEADER_PREFILLER,
        HEADER_DATA_PARALLEL,
        HEADER_ENCODERS,
    }
)

#: Label llm-d uses for the P/D role of an endpoint.
ROLE_LABEL = "llm-d.ai/role"

RequestKind = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class Metrics:
    """One scrape of a model server's ``/metrics``, in the units the scorers use.

    ``updated_at`` is a ``time.monotonic()`` stamp; an endpoint never scraped has
    ``updated_at == 0.0`` and counts as infinitely stale.
    """

    waiting_queue_size: int = 0  # vllm:num_requests_waiting
    running_requests_size: int = 0  # vllm:num_requests_running
    kv_cache_usage_percent: float = 0.0  # vllm:kv_cache_usage_perc, a fraction in [0, 1]
    active_models: frozenset[str] = frozenset()  # LoRA adapters running (lora_requests_info)
    waiting_models: frozenset[str] = frozenset()  # LoRA adapters waiting
    max_active_models: int = 0  # max_lora label of lora_requests_info
    cache_block_size: int = 0  # block_size label of vllm:cache_config_info (tokens)
    cache_num_gpu_blocks: int = 0  # num_gpu_blocks label of vllm:cache_config_info
    prefix_cache_queries: float = 0.0  # vllm:prefix_cache_queries_total (tokens)
    prefix_cache_hits: float = 0.0  # vllm:prefix_cache_hits_total (tokens)
    updated_at: float = 0.0  # time.monotonic() of the scrape

    def age_s(self, now: float | None = None) -> float:
        """Seconds since this snapshot was taken (``inf`` if never)."""
        if self.updated_at <= 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.updated_at


@dataclass(slots=True, eq=False)
class Endpoint:
    """One model-server rank that requests can be sent to.

    ``name`` is unique in the pool (``<namespace>/<pod>-rank-<i>`` under Kubernetes,
    ``host:port`` for static endpoints). Identity is by object; the pool keeps exactly one
    object per name and only swaps its ``metrics`` reference, so plugins may key state by
    ``name``. ``metrics`` is replaced whole, never mutated, so a reader sees one snapshot.
    """

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    scheme: str = "http"

    @property
    def hostport(self) -> str:
        """``address:port`` as Envoy's ORIGINAL_DST cluster expects it (IPv6 bracketed)."""
        if ":" in self.address and not self.address.startswith("["):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.hostport}"

    @property
    def role(self) -> str | None:
        """The ``llm-d.ai/role`` label (prefill, decode, both) or None."""
        return self.labels.get(ROLE_LABEL)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {self.hostport})"


@dataclass(frozen=True, slots=True)
class MMItem:
    """One multimodal content part of a chat request (kvgate.openai.multimodal parses them)."""

    modality: str  # image, video or audio (llm-d's Modality values)
    mm_hash: str  # kvgate.kvcache.hashing.mm_item_hash of the part's URL or inline data
    part: Mapping[str, Any]  # the content part as the client sent it (the encode leg sends it)


@dataclass(slots=True)
class Request:
    """What the scheduler knows of one inference request.

    Built once at the edge from the OpenAI body and the headers (lower-cased names, routing
    headers already stripped). ``prompt`` is set for /v1/completions, ``messages`` for
    /v1/chat/completions. ``token_ids`` is filled lazily by kvcache.tokenize and shared by
    every plugin of the cycle, so a prompt is tokenized at most once per request.
    """

    request_id: str
    model: str  # the model name the client asked for
    kind: RequestKind = "completions"
    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    target_model: str | None = None  # after rewrite: LoRA adapter or base model actually served
    token_ids: tuple[int, ...] | None = None
    cache_salt: str | None = None
    priority: int = 0  # the body's vLLM scheduling priority
    # the InferenceObjective's priority (x-gateway-inference-objective); < 0 is sheddable
    objective_priority: int = 0
    body: Mapping[str, Any] | None = None  # the parsed JSON body, for plugins that need more
    body_size: int = 0  # bytes of the original body
    extra: dict[str, Any] = field(default_factory=dict)  # per-request memo shared by plugins
    # DataProducer outputs, "<data type>/<producer name>" -> value (kvgate.scheduling.data)
    produced: dict[str, object] = field(default_factory=dict)
    # the chat's image/video/audio parts in message order, repeats included; () for text
    mm_items: tuple[MMItem, ...] = ()

    @property
    def effective_model(self) -> str:
        """The model the endpoint will serve: the rewrite target if any, else the requested one."""
        return self.target_model or self.model

    @property
    def session_token(self) -> str | None:
        return self.headers.get(HEADER_SESSION_TOKEN)


T = TypeVar("T")


class CycleState:
    """Per-scheduling-cycle scratch space, keyed by ``"<name>/<type>"`` as in llm-d.

    One instance per call of ``Scheduler.schedule``; plugins use it to hand data to later
    plugins of the same cycle (the prefix scorer's hashes to no-hit-lru and pd-profile-handler).
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, object] = {}

    def write(self, key: str, value: object) -> None:
        self._data[key] = value

    def read(self, key: str, kind: type[T]) -> T | None:
        """The value under ``key`` if it is a ``kind``, else None."""
        value = self._data.get(key)
        return value if isinstance(value, kind) else None

    def keys(self) -> list[str]:
        return list(self._data)


@dataclass(slots=True)
class ScoredEndpoint:
    """An endpoint with its weighted total score and the per-scorer raw scores (for logs).

    Built by the framework, one per filter survivor per profile, and read-only by convention
    for pickers and logs. Not frozen on purpose: a frozen dataclass sets each field through
    ``object.__setattr__``, which made building these a third of a decision's framework time
    (0.39 against 0.13 us each; 100 against 31 us at 256 endpoints, see docs/PERFORMANCE.md).
    """

    endpoint: Endpoint
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)  # scorer name -> clamped score


@dataclass(frozen=True, slots=True)
class ProfileRunResult:
    """The outcome of one scheduling profile: the picked targets, best first."""

    targets: tuple[Endpoint, ...]
    scored: tuple[ScoredEndpoint, ...] = ()  # every survivor of the filters, as the picker saw it


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    """All profile results of one cycle and which one is primary (its targets[0] is the pick)."""

    profile_results: Mapping[str, ProfileRunResult | None]
    primary_profile_name: str

    @property
    def primary(self) -> ProfileRunResult:
        result = self.profile_results.get(self.primary_profile_name)
        if result is None:  # the framework never builds such a result; guard for plugins
            raise LookupError(f"primary profile {self.primary_profile_name!r} has no result")
        return result

    @property
    def target(self) -> Endpoint:
        """The endpoint the request goes to."""
        return self.primary.targets[0]


@dataclass(slots=True)
class ResponseInfo:
    """How a request ended, handed to ResponseComplete hooks.

    ``status`` is the HTTP status the model server returned (0 if it never answered);
    ``error`` names the failure kind (``connect``, ``timeout``, ``upstream_5xx``,
    ``client_disconnect``, ``stream_error``) or None on success. Token counts come from
    ``usage`` when the server reported it.
    """

    status: int = 0
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # response headers plugins may add
    #: Envoy dynamic metadata ResponseComplete plugins report (namespace -> key -> number),
    #: e.g. request-attribute-reporter; None until one does (most requests: no allocation)
    metadata: dict[str, dict[str, float]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


#: A source of randomness plugins accept so tests can seed it (``random.Random`` satisfies it).
RandomSource = Any
#: A clock returning seconds (``time.monotonic`` in production).
Clock = Callable[[], float]
