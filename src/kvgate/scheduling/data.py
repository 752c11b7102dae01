"""Per-request data that producers compute before scheduling, and the keys consumers name.

llm-d splits "compute per-request data" (DataProducer plugins, run in the request-control
``PrepareRequestData`` step before any profile) from "score or filter with it" (consumers
that name their producer). A :class:`DataKey` is ``<data type>/<producer name>``, as llm-d
writes it; a consumer that names no producer uses the data type's default producer name,
which is the type name of the producer registered as its default (``approx-prefix-cache-
producer`` for prefix matches), so the framework can add that producer when none is
configured.

Invariants: a producer writes only its own keys; every value is immutable once written (frozen
dataclasses, mappings built fresh per request), so any number of profiles and hooks may read
it; values live on :attr:`Request.produced`, which also lets PreRequest and ResponseComplete
hooks (which get no cycle state) see them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from kvgate.scheduling.types import Request

#: llm-d's data type names (``plugin.NewDataKey`` first arguments).
PREFIX_CACHE_MATCH_INFO = "PrefixCacheMatchInfoDataKey"
TOKENIZED_PROMPT = "TokenizedPrompt"
IN_FLIGHT_LOAD = "InFlightLoad"
#: this request's own prompt tokens an endpoint would still compute (llm-d's
#: ``UncachedRequestTokens``), published by the in-flight load producer beside ``InFlightLoad``
UNCACHED_REQUEST_TOKENS = "UncachedRequestTokens"
ENCODER_CACHE_MATCH_INFO = "MultiModalEncoderCacheMatchInfoKey"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DataKey:
    """Which data, from which producer (by plugin name)."""

    data_type: str
    producer_name: str

    def __str__(self) -> str:
        return f"{self.data_type}/{self.producer_name}"


@dataclass(frozen=True, slots=True)
class PrefixCacheMatchInfo:
    """How much of the request's prefix one endpoint holds, in blocks.

    ``match_blocks`` may be fractional for the precise producer (tier-weighted: a CPU-tier
    block counts 0.8); ``cached_block_count`` is the unweighted count of leading blocks held.
    """

    match_blocks: float
    total_blocks: int
    block_size_tokens: int
    cached_block_count: int

    @property
    def ratio(self) -> float:
        """``match_blocks / total_blocks`` (0 when the request has no full block)."""
        return self.match_blocks / self.total_blocks if self.total_blocks > 0 else 0.0


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    """The request's prompt tokens; ``estimated`` when they are llm-d's 4-bytes-per-token
    packing (the ``estimate`` backend) rather than the model tokenizer's ids."""

    token_ids: tuple[int, ...]
    estimated: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class EncoderCacheMatchInfo:
    """Which of the request's distinct multimodal items one endpoint likely holds encoded
    (llm-d's ``EncoderCacheMatchInfo``; every item weighs 1, as in llm-d's producer)."""

    matched: tuple[str, ...]  # mm hashes (kvgate.kvcache.hashing.mm_item_hash) held there
    num_request_items: int  # distinct multimodal items in the request

    @property
    def ratio(self) -> float:
        """``len(matched) / num_request_items`` (0 for a request without items)."""
        n = self.num_request_items
        return len(self.matched) / n if n > 0 else 0.0


@dataclass(frozen=True, slots=True)
class InFlightLoad:
    """Requests and tokens kvgate has sent to one endpoint that have not completed."""

    requests: int
    tokens: int


#: The request's one tokenized-prompt slot: like llm-d's ``InferenceRequestBody.TokenizedPrompt``
#: it is filled by the first token producer that runs; later ones leave it alone.
_TOKENIZED_SLOT = TOKENIZED_PROMPT


def tokenized(request: Request) -> TokenizedPrompt | None:
    """The request's prompt tokens, if a token producer has run."""
    value = request.produced.get(_TOKENIZED_SLOT)
    return value if isinstance(value, TokenizedPrompt) else None


def put_tokenized(request: Request, key: DataKey, prompt: TokenizedPrompt) -> None:
    """Store ``prompt`` under ``key`` and, if still empty, in the request's token slot."""
    put(request, key, prompt)
    request.produced.setdefault(_TOKENIZED_SLOT, prompt)


def put(request: Request, key: DataKey, value: object) -> None:
    """Store ``value`` under ``key`` for the rest of the request's life."""
    request.produced[str(key)] = value


def get(request: Request, key: DataKey, kind: type[T]) -> T | None:
    """The value under ``key`` if a producer wrote one of type ``kind``, else None."""
    value = request.produced.get(str(key))
    return value if isinstance(value, kind) else None


def per_endpoint(request: Request, key: DataKey, kind: type[T]) -> Mapping[str, T] | None:
    """A per-endpoint mapping (endpoint name -> ``kind``) under ``key``, or None if absent."""
    value = request.produced.get(str(key))
    if not isinstance(value, Mapping):
        return None
    return value
