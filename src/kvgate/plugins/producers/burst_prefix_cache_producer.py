"""``burst-prefix-cache-producer``: keep a burst of same-prompt requests on one replica.

When many requests share a prompt at once (the ``n`` samples of an RL rollout step), every
cache is cold, cache scorers see zeros and load balancing scatters them, so the prompt is
prefilled on several replicas. This producer groups the requests of a time window by their
prompt prefix and steers each group to one replica, publishing
:class:`~kvgate.scheduling.data.PrefixCacheMatchInfo` (a full match on the group's replica,
zero elsewhere) for ``prefix-cache-scorer`` with ``prefixMatchInfoProducerName`` naming it.

* Grouping (llm-d's): requests with identical prefix blocks form a group; with
  ``minColocateBlocks > 0`` a request of a new prompt also joins the replica of a group it
  shares at least that many leading blocks with, while that replica is under its fair share
  (``ceil(window requests / replicas)``, or prefix blocks with ``balanceBy: tokens``). A group
  fills its replica up to ``maxPerReplica`` requests, then spills to the replica with the
  least window load (ties: fewer running requests, then name). A request with no full block,
  or one sharing nothing, gets no affinity (zero everywhere): other scorers decide.
* **Difference from llm-d:** llm-d holds every request up to ``windowDurationMs`` and assigns
  the window's requests jointly, longest prefix first, the first member of a group included.
  kvgate's data preparation is synchronous, so it assigns online and adds no latency: the
  first request of a prompt in a window gets no affinity and lands where the other scorers
  put it; this producer learns that pick (PreRequest) and the later requests of the window
  follow it. A window opens with the first request after the previous one closed. Prefix
  blocks are hashed from the prompt bytes (llm-d's 4-bytes-a-token estimate, as
  ``approx-prefix-cache-producer``), not from a token producer's ids.
* Parameters (llm-d's names and defaults): ``windowDurationMs`` (1..10000, 100),
  ``maxPerReplica`` (-1 = unlimited, or >= 1), ``blockSizeTokens`` (> 0, 64),
  ``maxPrefixTokensToMatch`` (0 = 2048 blocks, else >= ``blockSizeTokens``),
  ``minColocateBlocks`` (>= 0, 0), ``maxBatchSize`` (-1 = unlimited, or >= 1, 1000: requests
  a window takes; later ones in it get no affinity), ``balanceBy`` (``requests`` or ``tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvgate.errors import PluginParameterError
from kvgate.kvcache.hashing import prefix_hash_seed
from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixChain, prefix_input
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import Clock, CycleState, Endpoint, Request, SchedulingResult

TYPE = "burst-prefix-cache-producer"

UNLIMITED = -1
#: Leading blocks a group key covers when ``maxPrefixTokensToMatch`` is 0 (llm-d's cap).
DEFAULT_MAX_BLOCKS = 2048
MAX_WINDOW_MS = 10_000
BALANCE_MODES = ("requests", "tokens")
_BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class _Window:
    """Placements made since the window opened."""

    opened_at: float
    requests: int = 0
    load: dict[str, int] = field(default_factory=dict)  # replica -> requests or blocks
    groups: dict[tuple[int, ...], dict[str, int]] = field(default_factory=dict)  # -> per replica
    primary: dict[tuple[int, ...], str] = field(default_factory=dict)  # group -> first replica
    held: dict[int, set[str]] = field(default_factory=dict)  # block hash -> replicas holding it


@dataclass(frozen=True, slots=True)
class _Pending:
    """What PreRequest needs to record a request's placement."""

    hashes: tuple[int, ...]
    window: _Window


class BurstPrefixCacheProducer:
    """Producer + PreRequest (see the module docstring)."""

    type_name = TYPE
    strict_notes = (
        "assigns each window online: a prompt's first request gets no affinity and the rest "
        "follow its pick; llm-d holds every request up to windowDurationMs and assigns the "
        "window jointly; prefix blocks hash the prompt bytes, not a token producer's ids",
    )

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        window_s: float = 0.1,
        max_per_replica: int = UNLIMITED,
        block_size_tokens: int = 64,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        min_colocate_blocks: int = 0,
        max_batch_size: int = 1000,
        balance_by_tokens: bool = False,
    ) -> None:
        self.name = name
        self.clock = clock
        self.window_s = window_s
        self.max_per_replica = max_per_replica
        self.block_size_tokens = block_size_tokens
        self.max_blocks = max_blocks
        self.min_colocate_blocks = min_colocate_blocks
        self.max_batch_size = max_batch_size
        self.balance_by_tokens = balance_by_tokens
        self.key = DataKey(data.PREFIX_CACHE_MATCH_INFO, name)
        self._pending_key = f"{TYPE}/{name}"
        self._window: _Window | None = None

    def produces(self) -> tuple[DataKey, ...]:
        return (self.key,)

    def _current_window(self, now: float) -> _Window:
        if self._window is None or now - self._window.opened_at >= self.window_s:
            self._window = _Window(now)
        return self._window

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        seed = prefix_hash_seed(request.effective_model, request.cache_salt)
        chain = PrefixChain(
            prefix_input(request), self.block_size_tokens * _BYTES_PER_TOKEN, seed, self.max_blocks
        )
        hashes = tuple(chain.upto(chain.num_blocks))
        window = self._current_window(self.clock())
        target: str | None = None
        if hashes and (self.max_batch_size == UNLIMITED or window.requests < self.max_batch_size):
            window.requests += 1
            request.extra[self._pending_key] = _Pending(hashes, window)
            target = self._target(window, hashes, endpoints)
        total = len(hashes)
        data.put(
            request,
            self.key,
            {
                e.name: PrefixCacheMatchInfo(
                    total if e.name == target else 0,
                    total,
                    self.block_size_tokens,
                    total if e.name == target else 0,
                )
                for e in endpoints
            },
        )

    def _target(
        self, window: _Window, hashes: tuple[int, ...], endpoints: Sequence[Endpoint]
    ) -> str | None:
        """The replica this request should join, or None (no affinity: other scorers decide)."""
        names = {e.name for e in endpoints}
        placed = window.groups.get(hashes)
        if placed:  # a later member of a group placed in this window
            primary = window.primary[hashes]
            limit = self.max_per_replica
            if primary in names and (limit == UNLIMITED or placed.get(primary, 0) < limit):
                return primary
            return self._least_loaded(window, endpoints, placed)
        if self.min_colocate_blocks <= 0:
            return None
        shared = self._shared_prefix(window, hashes)
        fair_share = self._fair_share(window, len(hashes), len(endpoints))
        best: str | None = None
        for e in endpoints:
            blocks = shared.get(e.name, 0)
            if blocks < self.min_colocate_blocks or window.load.get(e.name, 0) >= fair_share:
                continue
            if best is None or blocks > shared[best]:
                best = e.name
        return best

    def _fair_share(self, window: _Window, blocks: int, replicas: int) -> int:
        total = sum(window.load.values()) + (blocks if self.balance_by_tokens else 1)
        return -(-total // max(replicas, 1))

    @staticmethod
    def _shared_prefix(window: _Window, hashes: tuple[int, ...]) -> dict[str, int]:
        """Per replica, the leading blocks of ``hashes`` placed there in this window."""
        shared: dict[str, int] = {}
        alive: set[str] | None = None
        for h in hashes:
            holders = window.held.get(h, set())
            alive = set(holders) if alive is None else alive & holders
            if not alive:
                break
            for name in alive:
                shared[name] = shared.get(name, 0) + 1
        return shared

    def _least_loaded(
        self, window: _Window, endpoints: Sequence[Endpoint], placed: dict[str, int]
    ) -> str | None:
        limit = self.max_per_replica
        open_ = [e for e in endpoints if limit == UNLIMITED or placed.get(e.name, 0) < limit]
        pool = open_ or list(endpoints)
        if not pool:
            return None
        best = min(
            pool,
            key=lambda e: (window.load.get(e.name, 0), e.metrics.running_requests_size, e.name),
        )
        return best.name

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        pending = request.extra.pop(self._pending_key, None)
        primary = result.profile_results.get(result.primary_profile_name)
        if not isinstance(pending, _Pending) or primary is None or not primary.targets:
            return
        window, hashes = pending.window, pending.hashes
        replica = primary.targets[0].name
        group = window.groups.setdefault(hashes, {})
        first_here = group.get(replica, 0) == 0
        window.primary.setdefault(hashes, replica)
        group[replica] = group.get(replica, 0) + 1
        if not self.balance_by_tokens:
            window.load[replica] = window.load.get(replica, 0) + 1
        elif first_here:  # a replica prefills a prefix once: charge the blocks it lacked
            held = self._shared_prefix(window, hashes).get(replica, 0)
            window.load[replica] = window.load.get(replica, 0) + len(hashes) - held
        for h in hashes:
            window.held.setdefault(h, set()).add(replica)


def _cap(params: Params, key: str, default: int) -> int:
    value = params.get_int(key, default)
    if value != UNLIMITED and value < 1:
        raise PluginParameterError(key, f"expected -1 (unlimited) or an integer >= 1, got {value}")
    return value


def create(name: str, params: Params, ctx: PluginContext) -> BurstPrefixCacheProducer:
    window_ms = params.get_int("windowDurationMs", 100, minimum=1)
    if window_ms > MAX_WINDOW_MS:
        raise PluginParameterError(
            "windowDurationMs", f"expected at most {MAX_WINDOW_MS}, got {window_ms}"
        )
    max_per_replica = _cap(params, "maxPerReplica", UNLIMITED)
    block_size = params.get_int("blockSizeTokens", 64, minimum=1)
    max_tokens = params.get_int("maxPrefixTokensToMatch", 0, minimum=0)
    if 0 < max_tokens < block_size:
        raise PluginParameterError(
            "maxPrefixTokensToMatch",
            f"expected 0 or at least blockSizeTokens ({block_size}), got {max_tokens}",
        )
    balance = params.get_str("balanceBy", "requests") or "requests"
    if balance not in BALANCE_MODES:
        raise PluginParameterError(
            "balanceBy", f"expected one of {', '.join(BALANCE_MODES)}, got {balance!r}"
        )
    return BurstPrefixCacheProducer(
        name,
        ctx.clock,
        window_s=window_ms / 1000.0,
        max_per_replica=max_per_replica,
        block_size_tokens=block_size,
        max_blocks=max_tokens // block_size if max_tokens else DEFAULT_MAX_BLOCKS,
        min_colocate_blocks=params.get_int("minColocateBlocks", 0, minimum=0),
        max_batch_size=_cap(params, "maxBatchSize", 1000),
        balance_by_tokens=balance == "tokens",
    )
