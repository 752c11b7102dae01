"""``token-producer`` (legacy name ``tokenizer``): the request's prompt tokens, once per request.

Publishes :class:`~kvgate.scheduling.data.TokenizedPrompt` under ``TokenizedPrompt/<name>``
for consumers such as ``inflight-load-producer`` and ``precise-prefix-cache-producer``.

* Backends, chosen as llm-d chooses them:

  - ``estimate`` (default, and what the framework auto-creates when a consumer needs tokens
    and no ``token-producer`` is configured): llm-d's tokenizer-free packing — the prompt
    (or the chat messages as compact JSON) as UTF-8 bytes, each 4 bytes one little-endian
    token id; no model, no service. Its ids are not the engine's.
  - ``vllm`` (``http`` in llm-d-inference-scheduler, ``url`` in llm-d-router) / ``modelName`` / ``udsTokenizerConfig``: the model's real token ids.
    **Difference from llm-d:** llm-d asks a vLLM ``/render`` endpoint (or the deprecated UDS
    sidecar) for them; kvgate computes the same ids in-process with
    :mod:`kvgate.kvcache.tokenize` with ``modelName``'s own tokenizer (found locally, in the
    Hugging Face cache or on the Hub unless offline; one that cannot be had stops start-up),
    else the front door's ``--tokenizer``, else -- with a start-up warning -- the built-in
    SmolLM2 one; memoised on the request and shared with every other plugin. The
    ``vllm.url`` / socket is validated and logged at start-up as not contacted.

* Parameters: ``modelName`` (string); ``vllm`` {``url`` or its older name ``http`` (http
  URL, default ``http://localhost:8000``), ``timeout`` (Go duration, 5s), ``mmTimeout`` (30s)};
  ``udsTokenizerConfig`` {``socketFile``}; ``estimate`` {} (its ``image`` / ``video``
  placeholder settings are rejected: kvgate puts no placeholder tokens for media in the
  prompt; images, video and audio are hashed at the edge, kvgate.openai.multimodal).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

from kvgate.errors import PluginParameterError
from kvgate.kvcache.tokenize import Tokenizer, chunk_encoder
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers._duration import get_duration_s
from kvgate.plugins.scorers._tokenizers import pool_tokenizers
from kvgate.plugins.scorers.prefix_cache_scorer import prefix_input
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, TokenizedPrompt
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "token-producer"
ALIASES = ("tokenizer",)
DEFAULT_PRODUCER_FOR = (data.TOKENIZED_PROMPT,)

BYTES_PER_TOKEN = 4

log = logging.getLogger("kvgate.plugins.token_producer")


def estimate_token_ids(text: bytes) -> tuple[int, ...]:
    """llm-d's ``estimate`` packing: every whole 4 bytes, little-endian, is one token id."""
    n = len(text) // BYTES_PER_TOKEN
    return struct.unpack(f"<{n}I", text[: n * BYTES_PER_TOKEN]) if n else ()


class TokenProducer:
    """Producer of ``TokenizedPrompt``; ``tokenizer`` None means the ``estimate`` backend."""

    type_name = TYPE

    def __init__(self, name: str, tokenizer: Tokenizer | None) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.key = DataKey(data.TOKENIZED_PROMPT, name)
        self.strict_notes: tuple[str, ...] = ()  # for ``kvgate config check --strict``

    @property
    def backend(self) -> str:
        return "estimate" if self.tokenizer is None else "tokenizer"

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        if data.tokenized(request) is not None:  # idempotent, as llm-d's: the first one wins
            return
        if self.tokenizer is None:
            prompt = TokenizedPrompt(estimate_token_ids(prefix_input(request)), estimated=True)
        else:
            ids = chunk_encoder(self.tokenizer).encode_request(request)
            prompt = TokenizedPrompt(ids, estimated=False)
        data.put_tokenized(request, self.key, prompt)


def _model_backend(params: Params, name: str) -> str | None:
    """Validate the remote-backend sections; return what kvgate stands in for, if any."""
    where: list[str] = []
    if params.has("vllm"):
        section = Params(params.get_mapping("vllm"))
        # ``http`` is llm-d-inference-scheduler's name for what llm-d-router calls ``url``
        if section.has("http") and section.has("url"):
            raise PluginParameterError("vllm.http", "give vllm.url or its older name, not both")
        url_key = "http" if section.has("http") else "url"
        url = section.get_str(url_key, "http://localhost:8000")
        if not url.startswith("http://"):
            raise PluginParameterError(f"vllm.{url_key}", f"expected an http:// URL, got {url!r}")
        for key, default in (("timeout", "5s"), ("mmTimeout", "30s")):
            try:
                get_duration_s(section, key, default)
            except PluginParameterError as exc:
                raise PluginParameterError(f"vllm.{exc.field}", exc.message) from None
        try:
            section.check_unknown()
        except PluginParameterError as exc:
            raise PluginParameterError(f"vllm.{exc.field}", exc.message) from None
        where.append(f"vllm.{url_key} {url}")
    if params.has("udsTokenizerConfig"):
        section = Params(params.get_mapping("udsTokenizerConfig"))
        socket = section.get_str("socketFile", "/tmp/tokenizer/tokenizer-uds.socket")
        try:
            section.check_unknown()
        except PluginParameterError as exc:
            raise PluginParameterError(f"udsTokenizerConfig.{exc.field}", exc.message) from None
        where.append(f"udsTokenizerConfig.socketFile {socket}")
    if where:
        log.warning(
            "token-producer %r: %s not contacted; kvgate tokenizes in-process with the "
            "model's tokenizer (kvgate.kvcache.tokenize)",
            name,
            " and ".join(where),
        )
    model = params.get_str("modelName", "")
    return model if (where or model) else None


def create(name: str, params: Params, ctx: PluginContext) -> TokenProducer:
    estimate = params.get_mapping("estimate")
    for key in ("image", "video"):
        if key in estimate:
            raise PluginParameterError(
                f"estimate.{key}",
                "multimodal placeholder estimation: kvgate adds no placeholder tokens for "
                "media to the prompt (its multimodal parts are hashed at the edge instead)",
            )
    if estimate:
        raise PluginParameterError(f"estimate.{sorted(estimate)[0]}", "unknown parameter")
    model = _model_backend(params, name)
    if model is None:
        return TokenProducer(name, None)
    tokenizers = pool_tokenizers(Params({}), ctx, f"{TYPE} {name!r}", model_name=model)
    producer = TokenProducer(name, tokenizers.default)
    remote = [key for key in ("vllm", "udsTokenizerConfig") if params.has(key)]
    if remote:
        producer.strict_notes = (
            f"{' and '.join(remote)}: not contacted; kvgate tokenizes in-process with the "
            "model's tokenizer (llm-d asks vLLM's /render or the UDS tokenizer)",
        )
    return producer
