"""``oracle-prefix-cache-scorer``: scores by what each replica's KV cache holds, as exactly as
kvgate can know it, to give benchmarks an upper bound for prefix-aware routing.

How it knows
    It binds a ZMQ SUB socket (``kvEventsConfig.zmqEndpoint``, llm-d's collector pattern:
    every replica's publisher connects to it) and keeps, per endpoint, the set of the
    engine's own 64-bit block hashes from ``BlockStored`` / ``BlockRemoved`` /
    ``AllBlocksCleared`` events (topic ``kv@<host:port>@<model>``; the endpoint name is
    ``host:port``). For a request it computes the engine's block hashes itself
    (kvgate.kvcache.hashing.block_hashes with the engine's algorithm, NONE_HASH seed and block
    size) and looks them up: no token-to-key mapping, no approximation of the text.

    The gap events leave -- a request is routed before the blocks of the previous request
    with the same prefix are stored -- is closed by a **speculative update on pick**: in
    ``pre_request`` the request's full prompt blocks are added to the chosen endpoint at
    once, and expire after ``speculativeTtlSeconds`` unless an event confirms them.

Score
    ``matched / total`` where ``matched`` is the longest run of leading prompt blocks held
    by the endpoint (confirmed or speculative) and ``total`` the request's full blocks; 0 for
    prompts shorter than one block.

Parameters
    ``kvEventsConfig.zmqEndpoint`` (default ``tcp://*:5557``), ``kvEventsConfig.topicFilter``
    (``kv@``), ``blockSize`` (0: learnt from the events, else 16), ``hashAlgo`` (``sha256``),
    ``hashSeed`` (vLLM's NONE_HASH seed; default ``$PYTHONHASHSEED`` or vLLM's fixed seed),
    ``tokenizer`` (path; default the built-in SmolLM2 tokenizer, the simulator's),
    ``speculativeTtlSeconds`` (10).

Limits (why it is an oracle for the benchmark, not a production scorer)
    It cannot see an eviction before the engine reports it, so a speculative or confirmed
    block may already be gone; events arrive with the publisher's batching delay. It needs
    the engine's exact hash parameters and tokenizer, and it ignores LoRA adapters, cache
    salts and multimodal extra keys (requests with a ``cache_salt`` score 0). It tokenizes on
    the request path (through kvgate.kvcache.tokenize.chunk_encoder, so a resent prefix
    is tokenized once) and hashes every block with SHA-256 (about 3 µs per block). It says nothing
    about load: combine it with queue and KV-utilisation scorers as the ``oracle`` policy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kvgate.kvcache.hashing import (
    HASH_ALGOS,
    EventBlockHash,
    block_hashes,
    to_event_hash,
)
from kvgate.kvcache.tokenize import ChunkCachedEncoder, Tokenizer, chunk_encoder
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Clock, CycleState, Endpoint, Request, SchedulingResult

TYPE = "oracle-prefix-cache-scorer"

log = logging.getLogger(__name__)

_DEFAULT_BLOCK_SIZE = 16


class OraclePrefixCacheScorer:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        zmq_endpoint: str = "tcp://*:5557",
        topic_filter: str = "kv@",
        block_size: int = 0,
        hash_algo: str = "sha256",
        hash_seed: str | None = None,
        tokenizer_path: str | None = None,
        speculative_ttl_s: float = 10.0,
        clock: Clock,
    ) -> None:
        self._name = name
        self.zmq_endpoint = zmq_endpoint
        self.topic_filter = topic_filter
        self.block_size = block_size
        self.hash_algo = hash_algo
        self.hash_seed = hash_seed
        self.speculative_ttl_s = speculative_ttl_s
        self._tokenizer_path = tokenizer_path
        self._clock = clock
        self._stored: dict[str, set[EventBlockHash]] = {}  # endpoint -> confirmed blocks
        self._speculative: dict[str, dict[EventBlockHash, float]] = {}  # -> expiry time
        self._learnt_block_size: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._socket: Any = None
        self._chunk_encoder: ChunkCachedEncoder | None = None
        self.events_applied = 0

    @property
    def type_name(self) -> str:
        return TYPE

    @property
    def name(self) -> str:
        return self._name

    # --- the cache view ---------------------------------------------------------------------

    def apply_event(self, endpoint: str, event: Any) -> None:
        """Apply one decoded KV event of ``endpoint`` (kvgate.kvcache.events types)."""
        from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored

        stored = self._stored.setdefault(endpoint, set())
        spec = self._speculative.get(endpoint)
        if isinstance(event, BlockStored):
            if event.medium not in (None, "GPU"):
                return  # other tiers are not prefix-cache hits for the engine's scheduler
            self._learnt_block_size[endpoint] = event.block_size
            for h in event.block_hashes:
                eh = EventBlockHash(int(h))
                stored.add(eh)
                if spec is not None:
                    spec.pop(eh, None)
        elif isinstance(event, BlockRemoved):
            if event.medium not in (None, "GPU"):
                return
            for h in event.block_hashes:
                eh = EventBlockHash(int(h))
                stored.discard(eh)
                if spec is not None:
                    spec.pop(eh, None)
        elif isinstance(event, AllBlocksCleared):
            stored.clear()
            self._speculative.pop(endpoint, None)
        self.events_applied += 1

    def _block_size_for(self, endpoint: Endpoint | str) -> int:
        if self.block_size:
            return self.block_size
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        learnt = self._learnt_block_size.get(name)
        if learnt:
            return learnt
        if not isinstance(endpoint, str) and endpoint.metrics.cache_block_size:
            return endpoint.metrics.cache_block_size
        return _DEFAULT_BLOCK_SIZE

    def request_hashes(self, request: Request, block_size: int) -> list[EventBlockHash]:
        """The engine's event hashes of the request's full prompt blocks (memoised)."""
        key = f"{TYPE}/hashes/{block_size}"
        cached = request.extra.get(key)
        if isinstance(cached, list):
            return cached
        if request.cache_salt:
            hashes: list[EventBlockHash] = []
        else:
            token_ids = self._encoder().encode_request(request)
            engine = block_hashes(token_ids, block_size, algo=self.hash_algo, seed=self.hash_seed)
            hashes = [to_event_hash(h) for h in engine]
        request.extra[key] = hashes
        return hashes

    def _encoder(self) -> ChunkCachedEncoder:
        if self._chunk_encoder is None:
            tok = (
                Tokenizer.default()
                if self._tokenizer_path is None
                else Tokenizer.from_path(self._tokenizer_path)
            )
            self._chunk_encoder = chunk_encoder(tok)
        return self._chunk_encoder

    def matched_blocks(self, endpoint: str, hashes: Sequence[EventBlockHash]) -> int:
        stored = self._stored.get(endpoint, set())
        spec = self._speculative.get(endpoint, {})
        now = self._clock()
        n = 0
        for h in hashes:
            if h in stored or spec.get(h, 0.0) > now:
                n += 1
            else:
                break
        return n

    # --- extension points -------------------------------------------------------------------

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        scores: dict[str, float] = {}
        for endpoint in endpoints:
            hashes = self.request_hashes(request, self._block_size_for(endpoint))
            if not hashes:
                scores[endpoint.name] = 0.0
                continue
            scores[endpoint.name] = self.matched_blocks(endpoint.name, hashes) / len(hashes)
        return scores

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        target = result.target
        hashes = self.request_hashes(request, self._block_size_for(target))
        if not hashes:
            return
        now = self._clock()
        spec = self._speculative.setdefault(target.name, {})
        if len(spec) > 100_000:  # prune expired entries now and then
            for h in [h for h, exp in spec.items() if exp <= now]:
                del spec[h]
        stored = self._stored.get(target.name, set())
        expiry = now + self.speculative_ttl_s
        for h in hashes:
            if h not in stored:
                spec[h] = expiry

    def endpoints_removed(self, names: Sequence[str]) -> None:
        for name in names:
            self._stored.pop(name, None)
            self._speculative.pop(name, None)
            self._learnt_block_size.pop(name, None)

    # --- event intake -----------------------------------------------------------------------

    async def start(self) -> None:
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.SUBSCRIBE, self.topic_filter)
        sock.bind(self.zmq_endpoint)
        self._socket = sock
        self._task = asyncio.create_task(self._receive(), name=f"{TYPE}:{self._name}")

    async def _receive(self) -> None:
        from kvgate.kvcache.events import BatchDecoder, parse_topic

        decoders: dict[str, BatchDecoder] = {}
        while True:
            frames = await self._socket.recv_multipart()
            if len(frames) != 3:
                continue
            parsed = parse_topic(frames[0])
            if parsed is None:
                continue
            endpoint = parsed[0]
            decoder = decoders.setdefault(endpoint, BatchDecoder())
            try:
                batch = decoder.decode(frames[2])
            except ValueError as exc:
                log.warning("%s: undecodable KV-event batch from %s: %s", TYPE, endpoint, exc)
                continue
            for event in batch.events:
                self.apply_event(endpoint, event)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


def create(name: str, params: Params, ctx: PluginContext) -> OraclePrefixCacheScorer:
    from kvgate.errors import PluginParameterError

    events = Params(params.get_mapping("kvEventsConfig"))
    zmq_endpoint = events.get_str("zmqEndpoint", "tcp://*:5557")
    topic_filter = events.get_str("topicFilter", "kv@")
    events.check_unknown("concurrency")
    hash_algo = params.get_str("hashAlgo", "sha256")
    if hash_algo not in HASH_ALGOS:
        raise PluginParameterError("hashAlgo", f"expected one of {', '.join(HASH_ALGOS)}")
    seed = params.get_any("hashSeed")
    if seed is not None and not isinstance(seed, str | int):
        raise PluginParameterError("hashSeed", "expected a string")
    tokenizer = params.get_str("tokenizer", "")
    return OraclePrefixCacheScorer(
        name,
        zmq_endpoint=zmq_endpoint,
        topic_filter=topic_filter,
        block_size=params.get_int("blockSize", 0, minimum=0),
        hash_algo=hash_algo,
        hash_seed=None if seed is None else str(seed),
        tokenizer_path=tokenizer or None,
        speculative_ttl_s=params.get_float("speculativeTtlSeconds", 10.0, minimum=0.0),
        clock=ctx.clock,
    )
