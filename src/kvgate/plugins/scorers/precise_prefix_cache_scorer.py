"""``precise-prefix-cache-scorer``: prefer endpoints whose engines *report* holding the prefix.

Reads what each engine actually stored and evicted, from vLLM's KV events over ZMQ
(kvgate.kvcache.subscriber -> kvgate.kvcache.index), instead of guessing from past routing.

* Formula (llm-d HEAD): tokenize the request as the engine does, chain the request keys of
  its ``n = floor(tokens / blockSize)`` full blocks, walk the longest consecutive prefix each
  candidate holds, adding per block the weight of the best tier it is held in (gpu 1.0,
  cpu 0.8 by default); ``score = min(1, weighted_hits / n)`` (0 when ``n = 0``).
* Parameters (llm-d's names; unknown keys are errors naming the field):

  - ``tokenProcessorConfig`` (top level or inside ``indexerConfig``): ``blockSizeTokens``
    (llm-d-router's name, wins) or ``blockSize`` (tokens;
    0/absent = learn from the first event; must equal the engines' ``--block-size``),
    ``hashSeed`` (string, default "").
  - ``indexerConfig``: ``kvBlockIndexConfig`` {``inMemoryConfig`` {``size``: request keys
    kept, default 10,000,000; ``podCacheSize``: accepted}, ``maxPrefixBlocksToMatch`` (at
    most this many leading blocks are looked up and scored; 0/absent = all),
    ``enableMetrics``, ``metricsLoggingInterval``}; ``tokenizersPoolConfig`` {``modelName``,
    ``local`` {``modelTokenizerMap``, ``autoDiscoveryDir``, ``autoDiscoveryTokenizerFileName``},
    ``hf`` {``enabled``, ``huggingFaceToken``, ``tokenizersCacheDir``}, kvgate's
    ``tokenizerPath``; ``uds``, ``workersCount``, ``minPrefixOverlapRatio``: accepted} (see
    :mod:`kvgate.plugins.scorers._tokenizers`);
    ``kvCacheBackendConfigs`` [{``name``, ``weight``}] (tier weights); ``prefixStoreConfig``:
    accepted.
  - ``kvEventsConfig``: ``zmqEndpoint`` (default ``tcp://*:5557``; the SUB binds it),
    ``topicFilter`` (``kv@``), ``concurrency`` (accepted; intake is one task per socket),
    ``discoverPods`` (connect a SUB to every candidate's publisher at
    ``podDiscoveryConfig.socketPort``, default 5556), ``publishers`` (kvgate: endpoint
    ``host:port`` -> the address of a PUB that binds, e.g. vLLM with ``tcp://*:5557``; one SUB
    connects to each), ``replayEndpoints`` (kvgate: endpoint ``host:port`` -> replay ROUTER
    address, for gap repair and late joins), ``replayTimeout`` (seconds, default 2).
  - ``tierWeights`` (kvgate shorthand for kvCacheBackendConfigs): ``{gpu: 1.0, cpu: 0.8}``.
  - ``speculativeIndexing`` (bool, default false; top level or inside ``indexerConfig``, as
    llm-d accepts both) and ``speculativeTTL`` (Go duration, default ``"2s"``): count a
    routed request's blocks as held by its endpoint before the engine reports them
    (:mod:`kvgate.kvcache.speculative`). **Difference from llm-d:** the prediction lasts
    while the request is in flight -- however long it queues on a saturated replica -- and
    ``speculativeTTL`` after it completes, not ``speculativeTTL`` from routing. Predicted
    blocks raise the score (at the GPU tier's weight) but not the predicted cached tokens,
    which stay what the engines reported.

* Tokenizer: the model's own, as llm-d finds it -- ``tokenizerPath``, else ``modelName``
  (through ``local``, the Hugging Face cache, or the Hub unless offline), else the front
  door's ``--tokenizer``; a request for a model in ``local.modelTokenizerMap`` uses that one.
  Only when nothing names a model is the built-in SmolLM2 tokenizer used, with a start-up
  warning; a named model whose tokenizer cannot be had stops start-up, naming it.
  Prompts are encoded through the process's chunk cache (``tokenize.chunk_encoder``: a
  resent long prefix is tokenized once) and the ids memoised on the request
  (``Request.token_ids``) so other plugins reuse them.
* Endpoints: the index knows engines by the ``host:port`` of their topic
  ``kv@<host:port>@<model>``, matched against ``Endpoint.hostport``; a topic with the pod IP
  only (``kv@<pod-ip>@<model>``, llm-d's guides) matches every endpoint at that address. A
  topic matching no endpoint of the pool is counted and logged once (the subscriber's
  ``unmatched_messages``).
* Outputs: cycle state :class:`PreciseMatchState` under ``"<name>/precise-prefix-cache-scorer"``;
  ``request.extra["precise_cached_tokens"]`` = {endpoint name: predicted cached tokens};
  after the pick, ``request.extra["predicted_cached_tokens"]`` for the target, and the
  response header ``x-kvgate-predicted-cached-tokens`` (non-streaming responses). Predicted
  cached tokens follow vLLM's rule: whole blocks, at most ``(prompt_tokens - 1) // blockSize``
  of them (the last token is always computed).
* Roles: Scorer, PreRequest, ResponseComplete, EndpointListener (drops an endpoint's entries
  when it leaves the pool), Lifecycle (starts the subscriber on the serving loop).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.errors import PluginParameterError
from kvgate.kvcache.index import DEFAULT_MAX_BLOCKS, DEFAULT_TIER_WEIGHTS, KVBlockIndex
from kvgate.kvcache.speculative import SpeculativeBlocks
from kvgate.kvcache.subscriber import DEFAULT_ZMQ_ENDPOINT, KVEventSubscriber, host_of
from kvgate.kvcache.tokenize import Tokenizer, chunk_encoder
from kvgate.plugins.base import Params, PluginContext, params_at, state_key
from kvgate.plugins.scorers._duration import get_duration_s
from kvgate.plugins.scorers._tokenizers import pool_tokenizers
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    Request,
    ResponseInfo,
    SchedulingResult,
)

TYPE = "precise-prefix-cache-scorer"

#: Response header carrying the predicted cached tokens on the chosen endpoint.
HEADER_PREDICTED_CACHED_TOKENS = "x-kvgate-predicted-cached-tokens"
EXTRA_CACHED_TOKENS = "precise_cached_tokens"  # {endpoint name: tokens}, every candidate
EXTRA_PREDICTED = "predicted_cached_tokens"  # tokens on the chosen endpoint
_EXTRA_KEYS = "precise_request_keys"  # (block_size, seed key, keys) memo
_EXTRA_SPECULATIVE = "precise_speculative"  # [(endpoint id, keys)] per forwarded attempt

log = logging.getLogger("kvgate.plugins.precise")


@dataclass(frozen=True, slots=True)
class PreciseMatchState:
    """What the scorer found for this request, for later plugins of the cycle."""

    num_tokens: int
    block_size: int
    num_blocks: int
    blocks: Mapping[str, int]  # endpoint name -> leading blocks held
    cached_tokens: Mapping[str, int]  # endpoint name -> predicted cached tokens


@dataclass(frozen=True, slots=True)
class EventsSettings:
    zmq_endpoint: str | None
    topic_filter: str
    discover_pods: bool
    socket_port: int
    replay_endpoints: Mapping[str, str]
    replay_timeout_s: float
    publishers: Mapping[str, str] = field(default_factory=dict)  # endpoint id -> PUB address


class PrecisePrefixCacheScorer:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        index: KVBlockIndex,
        events: EventsSettings,
        *,
        tokenizer: Tokenizer | None = None,
        model_tokenizers: Mapping[str, Tokenizer] | None = None,
        speculative: SpeculativeBlocks | None = None,
        predicted_weight: float = 1.0,
        max_prefix_blocks: int = 0,
    ) -> None:
        self._name = name
        self.max_prefix_blocks = max_prefix_blocks  # 0: every full block of the prompt
        self.index = index
        self.events = events
        self.speculative = speculative
        self.predicted_weight = predicted_weight  # a predicted block is computed on the GPU
        self.tokenizer = tokenizer or Tokenizer.default()
        self.model_tokenizers = dict(model_tokenizers or {})
        self.subscriber: KVEventSubscriber | None = None
        self._hostports: dict[str, str] = {}  # endpoint name -> index endpoint id
        self._connected: set[str] = set()

    @property
    def type_name(self) -> str:
        return TYPE

    @property
    def name(self) -> str:
        return self._name

    # --- Lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.subscriber is not None:
            return
        subscriber = KVEventSubscriber(
            self.index,
            bind=self.events.zmq_endpoint,
            topic_filter=self.events.topic_filter,
            replay_endpoints=self.events.replay_endpoints,
            replay_timeout_s=self.events.replay_timeout_s,
        )
        await subscriber.start()
        for endpoint_id, address in self.events.publishers.items():
            subscriber.connect(endpoint_id, address)
            self._connected.add(endpoint_id)
        self.subscriber = subscriber

    async def stop(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.stop()
            self.subscriber = None
            self._connected.clear()

    # --- EndpointListener -----------------------------------------------------------------------

    def endpoints_removed(self, names: Sequence[str]) -> None:
        for name in names:
            endpoint_id = self._hostports.pop(name, name)
            self._connected.discard(endpoint_id)
            if self.subscriber is not None:
                self.subscriber.endpoint_removed(endpoint_id)
                # a pod-IP stream goes with the last endpoint at that address
                host = host_of(endpoint_id)
                if all(host_of(hp) != host for hp in self._hostports.values()):
                    self.subscriber.endpoint_removed(host)
                self.subscriber.set_endpoints(frozenset(self._hostports.values()))
            else:
                self.index.drop_endpoint(endpoint_id)
            if self.speculative is not None:
                self.speculative.drop(endpoint_id)

    # --- Scorer ---------------------------------------------------------------------------------

    def tokenizer_for(self, request: Request) -> Tokenizer:
        return self.model_tokenizers.get(request.effective_model, self.tokenizer)

    def request_keys(self, request: Request, token_ids: Sequence[int]) -> list[int]:
        """The request's block keys, memoised on the request (several profiles may score it).

        A request for a LoRA adapter the engines have stored blocks for chains from that
        adapter's seed, as the engines' own hashes do (vLLM puts the LoRA name in extra_keys).
        """
        model = request.effective_model
        lora = model if model in self.index.lora_names else None
        seed = self.index.seed_key(lora)
        memo = request.extra.get(_EXTRA_KEYS)
        if isinstance(memo, tuple) and memo[0] == self.index.block_size and memo[1] == seed:
            return memo[2]  # type: ignore[no-any-return]
        keys: list[int] = list(self.index.request_keys(token_ids, lora))
        request.extra[_EXTRA_KEYS] = (self.index.block_size, seed, keys)
        return keys

    def match(
        self,
        request: Request,
        endpoints: Sequence[Endpoint],
        token_ids: Sequence[int] | None = None,
    ) -> tuple[dict[str, float], PreciseMatchState | None]:
        """Tier-weighted leading blocks held per endpoint (only entries > 0), and the state.

        ``token_ids`` are the prompt's tokens when a token producer already computed them;
        otherwise the request is tokenized here (memoised on the request). The state is None
        when no block can be keyed yet (block size unknown) or the prompt has no full block.
        """
        hostports = self._hostports
        subscriber = self.subscriber
        ids = []  # index ids: host:port, or the pod IP when its engines publish kv@<ip>@<model>
        changed = False
        for e in endpoints:
            hp = e.hostport
            if hostports.get(e.name) != hp:
                hostports[e.name] = hp
                changed = True
            ids.append(hp if subscriber is None else subscriber.index_id(e.address, hp))
        if changed and subscriber is not None:
            subscriber.set_endpoints(frozenset(hostports.values()))
        if self.events.discover_pods and self.subscriber is not None:
            self._discover(endpoints)
        if token_ids is None:
            # Through the shared chunk cache: a resent long prefix is not tokenized again (an
            # 8k prompt costs ~10 ms to encode whole, on the event loop).
            token_ids = chunk_encoder(self.tokenizer_for(request)).encode_request(request)
        block_size = self.index.block_size
        if block_size <= 0:
            return {}, None
        keys = self.request_keys(request, token_ids)
        if self.max_prefix_blocks > 0:
            keys = keys[: self.max_prefix_blocks]
        n = len(keys)
        if n == 0:
            return {}, None
        match = self.index.match(keys, ids)
        max_cached_blocks = (len(token_ids) - 1) // block_size
        weighted_hits: dict[str, float] = {}
        blocks: dict[str, int] = {}
        cached: dict[str, int] = {}
        spec = self.speculative
        for e, index_id in zip(endpoints, ids, strict=True):
            held = match.blocks.get(index_id, 0)
            blocks[e.name] = held
            cached[e.name] = min(held, max_cached_blocks) * block_size
            weighted = match.weighted[index_id] if held else 0.0
            if spec is not None:
                weighted = max(weighted, spec.held(e.hostport, keys) * self.predicted_weight)
            if weighted:
                weighted_hits[e.name] = weighted
        request.extra[EXTRA_CACHED_TOKENS] = cached
        return weighted_hits, PreciseMatchState(len(token_ids), block_size, n, blocks, cached)

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        weighted_hits, found = self.match(request, endpoints)
        if found is None:
            return {}
        state.write(state_key(self._name, TYPE), found)
        n = found.num_blocks
        return {name: min(1.0, weighted / n) for name, weighted in weighted_hits.items()}

    def _discover(self, endpoints: Sequence[Endpoint]) -> None:
        assert self.subscriber is not None
        for e in endpoints:
            hp = e.hostport
            if hp not in self._connected:
                self._connected.add(hp)
                host = (
                    f"[{e.address}]"
                    if ":" in e.address and not e.address.startswith("[")
                    else e.address
                )
                self.subscriber.connect(hp, f"tcp://{host}:{self.events.socket_port}")

    # --- PreRequest / ResponseComplete ----------------------------------------------------------

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        cached = request.extra.get(EXTRA_CACHED_TOKENS)
        if isinstance(cached, dict):
            request.extra[EXTRA_PREDICTED] = cached.get(result.target.name, 0)
        memo = request.extra.get(_EXTRA_KEYS)
        if self.speculative is not None and isinstance(memo, tuple):
            hp = result.target.hostport
            self.speculative.add(hp, memo[2])
            request.extra.setdefault(_EXTRA_SPECULATIVE, []).append((hp, memo[2]))

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None:
        cached = request.extra.get(EXTRA_CACHED_TOKENS)
        if isinstance(cached, dict):
            response.headers[HEADER_PREDICTED_CACHED_TOKENS] = str(cached.get(endpoint.name, 0))
        attempts = request.extra.get(_EXTRA_SPECULATIVE)
        if self.speculative is not None and attempts:
            hp = endpoint.hostport
            for i, (target, keys) in enumerate(attempts):
                if target == hp:
                    del attempts[i]
                    self.speculative.finish(hp, keys)
                    break


# --- parameters -----------------------------------------------------------------------------------


def _section(params: Params, key: str) -> Params:
    return Params(params.get_mapping(key))


def _token_processor(section: Params) -> tuple[int | None, str | None]:
    block_size = section.get_int("blockSize", 0, minimum=0) if section.has("blockSize") else None
    if section.has("blockSizeTokens"):  # llm-d-router's name; ``blockSize`` is deprecated
        block_size = section.get_int("blockSizeTokens", 0, minimum=0) or block_size
    seed = section.get_str("hashSeed", "") if section.has("hashSeed") else None
    section.check_unknown()
    return block_size, seed


def _tier_weights(raw: Any) -> dict[str, float]:
    """``{name: weight}`` or llm-d's ``[{name, weight}]``; field errors relative to the key."""
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):
        for i, entry in enumerate(raw):
            if (
                not isinstance(entry, Mapping)
                or "name" not in entry
                or set(entry) - {"name", "weight"}
            ):
                raise PluginParameterError(f"[{i}]", "expected a mapping with 'name' and 'weight'")
            items.append((entry["name"], entry.get("weight", 1.0)))
    else:
        raise PluginParameterError("", "expected a mapping of tier name to weight")
    out: dict[str, float] = {}
    for name, weight in items:
        if not isinstance(name, str) or not name:
            raise PluginParameterError("", f"tier names must be non-empty strings, got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise PluginParameterError(name, f"expected a non-negative number, got {weight!r}")
        out[name.lower()] = float(weight)
    if not out:
        raise PluginParameterError("", "expected at least one tier")
    return out


def _speculative(section: Params, on: bool, ttl_s: float) -> tuple[bool, float]:
    """``speculativeIndexing`` / ``speculativeTTL`` of one section, defaulting to the given."""
    on = section.get_bool("speculativeIndexing", on)
    if section.has("speculativeTTL"):
        ttl_s = get_duration_s(section, "speculativeTTL", "2s")
    return on, ttl_s


def create(name: str, params: Params, ctx: PluginContext) -> PrecisePrefixCacheScorer:
    block_size: int | None = None
    hash_seed: str | None = None
    max_blocks = DEFAULT_MAX_BLOCKS
    max_prefix_blocks = 0
    tiers: dict[str, float] = dict(DEFAULT_TIER_WEIGHTS)

    with params_at("tokenProcessorConfig"):
        block_size, hash_seed = _token_processor(_section(params, "tokenProcessorConfig"))

    with params_at("indexerConfig"):
        indexer = _section(params, "indexerConfig")
        if indexer.has("tokenProcessorConfig"):  # where older llm-d configs put it
            with params_at("tokenProcessorConfig"):
                bs, seed = _token_processor(_section(indexer, "tokenProcessorConfig"))
            block_size = bs if bs is not None else block_size
            hash_seed = seed if seed is not None else hash_seed
        with params_at("kvBlockIndexConfig"):
            block_index = _section(indexer, "kvBlockIndexConfig")
            with params_at("inMemoryConfig"):
                in_memory = _section(block_index, "inMemoryConfig")
                max_blocks = in_memory.get_int("size", DEFAULT_MAX_BLOCKS, minimum=1)
                in_memory.get_int("podCacheSize", 10, minimum=1)  # kvgate keeps every holder
                in_memory.check_unknown()
            max_prefix_blocks = block_index.get_int("maxPrefixBlocksToMatch", 0, minimum=0)
            block_index.get_bool("enableMetrics", True)  # kvgate_kv_index_* are always exported
            block_index.get_any("metricsLoggingInterval")
            block_index.check_unknown()
        with params_at("tokenizersPoolConfig"):
            tokenizers = pool_tokenizers(
                _section(indexer, "tokenizersPoolConfig"), ctx, f"{TYPE} {name!r}"
            )
        if indexer.has("kvCacheBackendConfigs"):
            with params_at("kvCacheBackendConfigs"):
                tiers = _tier_weights(indexer.get_any("kvCacheBackendConfigs"))
        indexer.get_mapping("prefixStoreConfig")
        speculative_on, speculative_ttl_s = _speculative(indexer, False, 2.0)
        indexer.check_unknown()

    if params.has("tierWeights"):
        with params_at("tierWeights"):
            tiers = _tier_weights(params.get_any("tierWeights"))
    speculative_on, speculative_ttl_s = _speculative(params, speculative_on, speculative_ttl_s)

    with params_at("kvEventsConfig"):
        events = _section(params, "kvEventsConfig")
        zmq_endpoint = events.get_str("zmqEndpoint", DEFAULT_ZMQ_ENDPOINT)
        topic_filter = events.get_str("topicFilter", "kv@")
        events.get_int("concurrency", 4, minimum=1)
        discover = events.get_bool("discoverPods", False)
        with params_at("podDiscoveryConfig"):
            discovery = _section(events, "podDiscoveryConfig")
            socket_port = discovery.get_int("socketPort", 5556, minimum=1)
            discovery.check_unknown()
        replay: dict[str, str] = {}
        with params_at("replayEndpoints"):
            for endpoint_id, address in events.get_mapping("replayEndpoints").items():
                if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://")):
                    raise PluginParameterError(
                        str(endpoint_id), f"expected a tcp:// or ipc:// address, got {address!r}"
                    )
                replay[str(endpoint_id)] = address
        publishers: dict[str, str] = {}
        with params_at("publishers"):
            for endpoint_id, address in events.get_mapping("publishers").items():
                if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://")):
                    raise PluginParameterError(
                        str(endpoint_id), f"expected a tcp:// or ipc:// address, got {address!r}"
                    )
                publishers[str(endpoint_id)] = address
        replay_timeout_s = events.get_float("replayTimeout", 2.0, minimum=0.01)
        events.check_unknown()

    index = KVBlockIndex(
        block_size=block_size or 0,
        hash_seed=hash_seed or "",
        tier_weights=tiers,
        max_blocks=max_blocks,
    )
    # With discoverPods or publishers the SUBs connect to each publisher; bind too only when
    # zmqEndpoint is given explicitly.
    bind: str | None = zmq_endpoint
    if (discover or publishers) and not events.has("zmqEndpoint"):
        bind = None
    settings = EventsSettings(
        zmq_endpoint=bind,
        topic_filter=topic_filter,
        discover_pods=discover,
        socket_port=socket_port,
        replay_endpoints=replay,
        replay_timeout_s=replay_timeout_s,
        publishers=publishers,
    )
    return PrecisePrefixCacheScorer(
        name,
        index,
        settings,
        tokenizer=tokenizers.default,
        model_tokenizers=tokenizers.per_model,
        speculative=SpeculativeBlocks(speculative_ttl_s, ctx.clock) if speculative_on else None,
        predicted_weight=tiers.get("gpu", max(tiers.values())),
        max_prefix_blocks=max_prefix_blocks,
    )
