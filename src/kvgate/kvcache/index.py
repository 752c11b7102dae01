"""The precise prefix-cache index: what every engine actually holds, from its KV events.

Two maps, as in llm-d's kv-cache manager (since it stopped recomputing vLLM's hashes):

- ``engine hash -> request key`` (:class:`~kvgate.kvcache.engine_map.EngineMap`, 16 bytes
  per translation once frozen into sorted numpy segments): a BlockStored event carries the
  engine's 64-bit block hashes and the token ids; kvgate chains its own request keys over those tokens from the
  parent block's request key (``hashing.request_keys``), so the router never needs vLLM's
  hash algorithm or seed. The translation is a pure function of the tokens, so it stays
  valid after the blocks are evicted and is kept (bounded) to chain later events.
- ``request key -> holders``: one Python int per block, a bit field with ``T`` bits per
  endpoint slot (one per tier: gpu, cpu, ...). Endpoints get small slot ids, so a block held
  by many replicas costs one int, not one object per replica. The map is split into
  ``2**s`` shard dicts by the key's low bits, each holding at most ``shard_blocks`` keys, so
  that no dict resize (CPython rebuilds a whole dict at once: ~130 ms at 2.8 M keys) and no
  eviction chunk stalls the event loop. A shard stores ``key >> 4``: a 60-bit int takes 32
  bytes where a 64-bit one takes 40, and with 16 or more shards the low 4 bits are implied
  by the shard. (``key >> 4`` alone would not do: CPython sizes a shift's result before
normalising it, so it keeps a 3-digit, 48-byte block; ``& (2**60 - 1)`` allocates 2 digits.)

Scoring tokenizes the prompt once, chains the same request keys and walks the longest
consecutive prefix per candidate with bit operations over all candidates at once.

Bounded memory: at most ``max_blocks`` request keys (and twice as many engine hashes). Each
shard holds at most ``max_blocks // shards`` keys and evicts its oldest-stored first, in
chunks of 1/64 of that (dict insertion order is the LRU order: storing a block in a tier or
endpoint that did not hold it moves it to the back). With one shard (``max_blocks <=
shard_blocks``) this is exact LRU over the index; with several it is exact per shard, and
since request keys are uniform hashes every shard's oldest blocks are about the index's
oldest. Dropping an endpoint (it left the pool, sent AllBlocksCleared, or its
event stream had a gap that could not be repaired) retires its slot at once; its bits are
ignored from then on and swept out before the slot is reused: a small index at once, a large
one :data:`SWEEP_CHUNK` keys at the end of each event batch (a whole pass over 3 M blocks
took 0.76 s of the gateway's loop in one piece).

Not thread-safe: the subscriber and the scheduler share one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice

from kvgate.kvcache.engine_map import EngineMap
from kvgate.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from kvgate.kvcache.hashing import RequestKey, request_key_seed, request_keys
from kvgate.kvcache.metrics import track_index

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_SHARD_BLOCKS",
    "DEFAULT_TIER_WEIGHTS",
    "IndexStats",
    "KVBlockIndex",
    "PrefixMatch",
]

#: llm-d's kvCacheBackendConfigs default: a CPU-tier hit is worth 0.8 of a GPU hit.
DEFAULT_TIER_WEIGHTS: Mapping[str, float] = {"gpu": 1.0, "cpu": 0.8}
#: Default cap on request keys (blocks); about 1.1 GB at worst (one holder per block).
DEFAULT_MAX_BLOCKS = 10_000_000
#: Most request keys per shard dict: bounds the longest dict resize (~3 ms) and eviction chunk.
DEFAULT_SHARD_BLOCKS = 1 << 16
#: Shards store ``key >> _KEY_SHIFT & _KEY_MASK``: at most 60 bits, a 32-byte int, where a
#: 64-bit int takes a 48-byte block (pymalloc rounds to 16 bytes).
_KEY_SHIFT = 4
_KEY_MASK = (1 << 60) - 1
#: Retired slots are swept immediately while the index is this small, else in one pass
#: once this many slots wait (a pass over 10 M blocks takes seconds).
#: Keys a sweep visits per event batch (~2 ms), and the index size swept in one go.
SWEEP_CHUNK = 8192
_SWEEP_NOW_BELOW = SWEEP_CHUNK


@dataclass(slots=True)
class _Sweep:
    """Clearing the bits of retired slots, a chunk of one shard's keys at a time."""

    bits: int  # the retired slots' bits
    slots: list[int]  # freed when the pass is done
    shard: int = 0  # next shard to visit
    keys: list[int] | None = None  # that shard's keys when its visit began
    pos: int = 0


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest cached prefix of one request on each candidate endpoint.

    ``blocks[e]``: consecutive leading blocks held by ``e`` in any tier; ``weighted[e]``: the
    same walk with each block weighted by the best tier ``e`` holds it in.
    """

    num_blocks: int  # full blocks of the request
    blocks: Mapping[str, int] = field(default_factory=dict)
    weighted: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class IndexStats:
    """Plain counters, read by the Prometheus collector at scrape time (no per-event cost)."""

    events_stored: int = 0
    events_removed: int = 0
    events_cleared: int = 0
    blocks_stored: int = 0
    blocks_removed: int = 0
    dropped_events: dict[str, int] = field(default_factory=dict)  # reason -> events
    evicted_blocks: int = 0
    lookups: int = 0
    lookup_blocks: int = 0  # blocks asked for
    lookup_hit_blocks: int = 0  # blocks of the best candidate's prefix
    last_lag_s: float = 0.0  # receive time - batch ts of the latest batch
    max_lag_s: float = 0.0
    purged_endpoints: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.lookup_hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0


class KVBlockIndex:
    """Engine block hashes -> request keys -> {endpoint: tiers}; see the module docstring.

    ``block_size`` 0 adopts the block size of the first BlockStored event (every later event
    must agree: request keys only line up with engine blocks of the same size).
    """

    def __init__(
        self,
        *,
        block_size: int = 0,
        hash_seed: str = "",
        tier_weights: Mapping[str, float] = DEFAULT_TIER_WEIGHTS,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        key_algo: str = "poly64",
        clock: Callable[[], float] = time.time,
        shard_blocks: int = DEFAULT_SHARD_BLOCKS,
    ) -> None:
        if block_size < 0:
            raise ValueError(f"block_size must be >= 0, got {block_size}")
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        if shard_blocks < 1:
            raise ValueError(f"shard_blocks must be >= 1, got {shard_blocks}")
        if not tier_weights:
            raise ValueError("tier_weights must name at least one tier")
        self.block_size = block_size
        self.hash_seed = hash_seed
        self.key_algo = key_algo
        self.max_blocks = max_blocks
        self.clock = clock
        self.stats = IndexStats()
        self._tiers = {name.lower(): i for i, name in enumerate(tier_weights)}
        self._tier_count = len(self._tiers)
        weights = [float(w) for w in tier_weights.values()]
        # weight of a slot's tier bit field (best tier held), indexed by the field's value
        self._field_weight = [
            max((weights[t] for t in range(self._tier_count) if f >> t & 1), default=0.0)
            for f in range(1 << self._tier_count)
        ]
        self._best_tier = max(range(self._tier_count), key=lambda t: weights[t])
        self._w_best = weights[self._best_tier]
        self._slot_fill = (1 << self._tier_count) - 1  # base bit * fill = all tier bits of a slot
        # Trimming drops a whole oldest segment: keep segments to 1/8 of the map's 2x cap.
        self._engine = EngineMap(max_segment=min(1 << 21, max(1 << 16, max_blocks // 4)))
        shards = 1
        while max_blocks > shards * shard_blocks and shards < max_blocks:
            shards *= 2
        # request key -> holders mask, split by the key's low bits (see the module docstring)
        self._shards: list[dict[int, int]] = [{} for _ in range(shards)]
        self._shard_mask = shards - 1
        self._shard_cap = max(1, max_blocks // shards)
        self._evict_chunk = self._shard_cap // 64
        self._slots: dict[str, int] = {}
        self._slot_names: dict[int, str] = {}
        self._slot_entries: list[int] = []
        self._free_slots: list[int] = []
        self._dead_slots: list[int] = []  # retired, not yet in a sweep
        self._dead_bits = 0  # bits of every retired slot not yet freed
        self._sweep: _Sweep | None = None
        self._base_all = 0  # the lowest tier bit of every slot ever allocated
        self._num_entries = 0
        self._seeds: dict[str | None, int] = {}
        self.lora_names: set[str] = set()  # adapters seen in BlockStored events
        track_index(self)

    # --- sizes ----------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Request keys held (by at least one endpoint, or awaiting a sweep)."""
        return sum(map(len, self._shards))

    @property
    def num_entries(self) -> int:
        """(block, endpoint) pairs, each counted once whatever its tiers."""
        return self._num_entries

    @property
    def num_engine_hashes(self) -> int:
        return len(self._engine)

    def endpoints(self) -> list[str]:
        return sorted(self._slots)

    def endpoint_entries(self, endpoint: str) -> int:
        slot = self._slots.get(endpoint)
        return 0 if slot is None else self._slot_entries[slot]

    # --- keys -----------------------------------------------------------------------------------

    def seed_key(self, lora_name: str | None = None) -> int:
        """Parent key of a request's first block (a LoRA adapter gets its own chain)."""
        key = self._seeds.get(lora_name)
        if key is None:
            seed = self.hash_seed if lora_name is None else f"{self.hash_seed}\x00lora:{lora_name}"
            key = int(request_key_seed(seed, "xxh64"))
            self._seeds[lora_name] = key
        return key

    def request_keys(
        self, token_ids: Sequence[int], lora_name: str | None = None
    ) -> list[RequestKey]:
        """The request keys of every full block of a prompt (empty until the block size is known)."""
        if self.block_size <= 0:
            return []
        return request_keys(
            token_ids, self.block_size, parent=self.seed_key(lora_name), algo=self.key_algo
        )

    # --- ingest ---------------------------------------------------------------------------------

    def apply_batch(
        self, endpoint: str, batch: EventBatch, received_at: float | None = None
    ) -> None:
        """Apply every event of one batch from ``endpoint``, in order."""
        stats = self.stats
        lag = (self.clock() if received_at is None else received_at) - batch.ts
        stats.last_lag_s = lag
        if lag > stats.max_lag_s:
            stats.max_lag_s = lag
        for event in batch.events:
            if isinstance(event, BlockStored):
                self.block_stored(endpoint, event)
            elif isinstance(event, BlockRemoved):
                self.block_removed(endpoint, event)
            elif isinstance(event, AllBlocksCleared):
                stats.events_cleared += 1
                self.drop_endpoint(endpoint)
        if self._sweep is not None:
            self.sweep_step()

    def _drop(self, reason: str) -> None:
        dropped = self.stats.dropped_events
        dropped[reason] = dropped.get(reason, 0) + 1

    def _slot_of(self, endpoint: str) -> int:
        slot = self._slots.get(endpoint)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                slot = len(self._slot_entries)
                self._slot_entries.append(0)
            self._slots[endpoint] = slot
            self._slot_names[slot] = endpoint
            self._base_all |= 1 << (slot * self._tier_count)
        return slot

    def _tier_bit(self, endpoint: str, medium: str | None) -> tuple[int, int] | None:
        tier = self._tiers.get(medium.lower() if medium else "gpu")
        if tier is None:
            return None
        slot = self._slot_of(endpoint)
        return slot, 1 << (slot * self._tier_count + tier)

    def block_stored(self, endpoint: str, event: BlockStored) -> None:
        hashes = event.block_hashes
        n = len(hashes)
        if n == 0:
            return
        size = event.block_size
        if size != self.block_size:
            if self.block_size == 0 and size > 0:
                self.block_size = size
            else:
                self._drop("block_size_mismatch")
                return
        placed = self._tier_bit(endpoint, event.medium)
        if placed is None:
            self._drop("unknown_medium")
            return
        slot, bit = placed
        engine = self._engine
        parent_hash = event.parent_block_hash
        if parent_hash is None:
            lora = event.lora_name
            if lora is not None and lora not in self.lora_names:
                self.lora_names.add(lora)
            parent = self.seed_key(lora)
        else:
            # (refresh: a long-cached parent, e.g. a shared system prompt, keeps its
            # translation however many blocks are stored after it)
            found = engine.get(parent_hash, refresh=True)  # type: ignore[arg-type]
            if found is None:
                self._drop("unknown_parent")
                return
            parent = found
        tokens = event.token_ids
        count = n * size
        if len(tokens) >= count:
            keys: list[int] = request_keys(  # type: ignore[assignment]
                tokens if len(tokens) == count else tokens[:count],
                size,
                parent=parent,
                algo=self.key_algo,
            )
        else:
            # No tokens (e.g. a CPU-offload placeholder): the engine hashes must be known.
            keys = []
            for key in engine.get_many(hashes):  # type: ignore[arg-type]
                if key is None:
                    break
                keys.append(key)
            if len(keys) < n:
                self._drop("unknown_hash")
                if not keys:
                    return
                hashes = hashes[: len(keys)]
        # Translations are pure functions of the tokens: overwrite without reordering.
        engine.update(zip(hashes, keys, strict=True))  # type: ignore[arg-type]
        shards = self._shards
        shard_mask = self._shard_mask
        cap = self._shard_cap
        fill = self._slot_fill << (slot * self._tier_count)
        added = 0
        for key in keys:
            shard = shards[key & shard_mask]
            short = key >> _KEY_SHIFT & _KEY_MASK  # a fresh 2-digit int (see the docstring)
            mask = shard.get(short)
            if mask is None:
                shard[short] = bit
                added += 1
                if len(shard) > cap:
                    self._evict(shard)
            elif not mask & bit:
                del shard[short]  # re-insert: storing again makes the block young
                shard[short] = mask | bit
                if not mask & fill:  # a block held in two tiers is one entry
                    added += 1
        if added:
            self._slot_entries[slot] += added
            self._num_entries += added
        stats = self.stats
        stats.events_stored += 1
        stats.blocks_stored += len(keys)
        # Engine translations outlive evicted blocks (later events chain from them): 2x cap.
        if len(engine) > 2 * self.max_blocks:
            engine.trim(2 * self.max_blocks - self.max_blocks // 32)

    def block_removed(self, endpoint: str, event: BlockRemoved) -> None:
        self.stats.events_removed += 1
        slot = self._slots.get(endpoint)
        if slot is None:
            return
        tier = self._tiers.get(event.medium.lower() if event.medium else "gpu")
        if tier is None:
            self._drop("unknown_medium")
            return
        shift = slot * self._tier_count
        bit = 1 << (shift + tier)
        fill = self._slot_fill << shift
        keep = ~self._dead_bits
        shards = self._shards
        shard_mask = self._shard_mask
        removed = 0
        for key in self._engine.get_many(event.block_hashes):  # type: ignore[arg-type]
            if key is None:
                continue
            shard = shards[key & shard_mask]
            short = key >> _KEY_SHIFT
            mask = shard.get(short)
            if mask is None or not mask & bit:
                continue
            mask &= ~bit
            if not mask & fill:
                removed += 1
            if mask & keep:
                shard[short] = mask
            else:
                del shard[short]
        self.stats.blocks_removed += len(event.block_hashes)
        self._slot_entries[slot] -= removed
        self._num_entries -= removed

    def _evict(self, shard: dict[int, int]) -> None:
        """Drop the oldest blocks of a shard over its cap, 1/64 of the cap beyond (every holder).

        The chunk amortises skipping the deleted entries at the front of the dict's entry
        table (a new iterator starts there); its size bounds the work of one call.
        """
        count = len(shard) - self._shard_cap + self._evict_chunk
        victims = list(islice(shard, count))
        tiers = self._tier_count
        fill = self._slot_fill
        slot_entries = self._slot_entries
        live = ~self._dead_bits
        lost = 0
        for short in victims:
            mask = shard.pop(short) & live
            while mask:
                low = mask & -mask
                slot = (low.bit_length() - 1) // tiers
                slot_entries[slot] -= 1
                lost += 1
                mask &= ~(fill << (slot * tiers))
        self._num_entries -= lost
        self.stats.evicted_blocks += len(victims)

    def drop_endpoint(self, endpoint: str) -> None:
        """Forget everything ``endpoint`` holds (left the pool, cleared, or out of sync)."""
        slot = self._slots.pop(endpoint, None)
        if slot is None:
            return
        del self._slot_names[slot]
        self.stats.purged_endpoints += 1
        self._num_entries -= self._slot_entries[slot]
        self._slot_entries[slot] = 0
        self._dead_bits |= self._slot_fill << (slot * self._tier_count)
        self._dead_slots.append(slot)
        if self.num_blocks < _SWEEP_NOW_BELOW:
            self.sweep()
        elif self._sweep is None:
            self._start_sweep()

    def _start_sweep(self) -> None:
        fill = self._slot_fill
        bits = 0
        for slot in self._dead_slots:
            bits |= fill << (slot * self._tier_count)
        self._sweep = _Sweep(bits, self._dead_slots)
        self._dead_slots = []

    @property
    def sweeping(self) -> bool:
        """A sweep is under way (retired slots are not free yet)."""
        return self._sweep is not None

    def sweep_step(self, budget: int = SWEEP_CHUNK) -> None:
        """Visit up to ``budget`` keys of the sweep under way. Keys are listed per shard when
        its visit begins: a key stored later cannot hold a retired slot's bits (retired slots
        are not reused until the pass is done)."""
        sw = self._sweep
        if sw is None:
            return
        shards = self._shards
        dead = sw.bits
        while budget > 0:
            if sw.keys is None:
                if sw.shard == len(shards):
                    self._finish_sweep(sw)
                    return
                sw.keys = list(shards[sw.shard])
                sw.pos = 0
            shard = shards[sw.shard]
            end = min(sw.pos + budget, len(sw.keys))
            for short in sw.keys[sw.pos : end]:
                mask = shard.get(short)
                if mask is not None and mask & dead:
                    mask &= ~dead
                    if mask:
                        shard[short] = mask
                    else:
                        del shard[short]
            budget -= max(1, end - sw.pos)
            sw.pos = end
            if end == len(sw.keys):
                sw.keys = None
                sw.shard += 1

    def _finish_sweep(self, sw: _Sweep) -> None:
        self._free_slots.extend(sw.slots)
        self._dead_bits &= ~sw.bits
        self._sweep = None
        if self._dead_slots:  # retired while this pass ran
            self._start_sweep()

    def sweep(self) -> None:
        """Clear the bits of every retired slot now, and free those slots for reuse."""
        while self._sweep is not None or self._dead_slots:
            if self._sweep is None:
                self._start_sweep()
            self.sweep_step(1 << 62)

    # --- lookup ---------------------------------------------------------------------------------

    def match(self, keys: Sequence[int], endpoints: Sequence[str]) -> PrefixMatch:
        """Longest consecutive prefix of ``keys`` held by each of ``endpoints``.

        One walk over the keys for all candidates at once: ``live`` holds every tier bit of
        the candidates still matching; only where the mask changes is anything decoded. A
        candidate's block count is where it dropped out; its weight is ``blocks * w_best``
        minus, over runs where it lacked the best tier, ``length * (w_best - w_held)``.
        """
        n = len(keys)
        stats = self.stats
        stats.lookups += 1
        stats.lookup_blocks += n
        tiers = self._tier_count
        fill = self._slot_fill
        slots = self._slots
        live_base = 0
        for name in endpoints:
            slot = slots.get(name)
            if slot is not None:
                live_base |= 1 << (slot * tiers)
        if not live_base or not n:
            return PrefixMatch(n)
        shards = self._shards
        shard_mask = self._shard_mask
        base_all = self._base_all
        best_tier = self._best_tier
        live = live_base * fill
        drops: list[tuple[int, int]] = []  # (slots that stopped matching, at key index)
        # tier bits of the slots lacking the best tier -> blocks: runs that differ only in
        # other slots (one dropped out) add up, so each pattern is decoded once at the end
        penalties: dict[int, int] = {}
        # C-level lookups and run grouping; Python only runs once per run of equal masks.
        masks = [shards[key & shard_mask].get(key >> _KEY_SHIFT) for key in keys]
        try:
            end = masks.index(None)
        except ValueError:
            end = n
        position = 0
        for raw, group in groupby(masks[:end] if end < n else masks):
            length = len(list(group))
            mask = raw & live  # type: ignore[operator]  # None only past `end`
            if not mask:
                end = position
                break
            present = mask
            for t in range(1, tiers):
                present |= mask >> t
            present &= base_all
            if present != live_base:
                drops.append((live_base & ~present, position))
                live_base = present
                live = present * fill
            lacking = present & ~(mask >> best_tier)
            if lacking:
                held = mask & lacking * fill
                penalties[held] = penalties.get(held, 0) + length
            position += length
        drops.append((live_base, end))
        blocks: dict[int, int] = {}
        for bits, position in drops:
            if not position:
                continue
            while bits:
                low = bits & -bits
                blocks[(low.bit_length() - 1) // tiers] = position
                bits ^= low
        w_best = self._w_best
        weighted = {slot: count * w_best for slot, count in blocks.items()}
        if penalties:
            field_weight = self._field_weight
            for held, length in penalties.items():
                bits = held
                for t in range(1, tiers):
                    bits |= held >> t
                bits &= base_all
                while bits:
                    low = bits & -bits
                    bits ^= low
                    shift = low.bit_length() - 1
                    weighted[shift // tiers] -= length * (
                        w_best - field_weight[(held >> shift) & fill]
                    )
        names = self._slot_names
        stats.lookup_hit_blocks += max(blocks.values(), default=0)
        return PrefixMatch(
            n,
            {names[s]: b for s, b in blocks.items()},
            {names[s]: w for s, w in weighted.items()},
        )

    def holders(self, key: int) -> dict[str, list[str]]:
        """Debug view: endpoint -> tiers holding ``key``."""
        shard = self._shards[key & self._shard_mask]
        mask = shard.get(key >> _KEY_SHIFT, 0) & ~self._dead_bits
        tier_names = list(self._tiers)
        out: dict[str, list[str]] = {}
        for name, slot in self._slots.items():
            field_bits = (mask >> (slot * self._tier_count)) & self._slot_fill
            if field_bits:
                out[name] = [tier_names[t] for t in range(self._tier_count) if field_bits >> t & 1]
        return out
