"""``p2p-source-producer``: name a peer the computing endpoint can pull cached KV blocks from.

* Produce (before scheduling), llm-d's: from a prefix producer's
  :class:`~kvgate.scheduling.data.PrefixCacheMatchInfo`, each candidate's cached tokens are
  ``cached_block_count · block_size_tokens``; the candidates within one block of the most
  cached tokens are weighted ``1 / (1 + waiting requests)`` and one is drawn with the
  request id's FNV-1a hash as the sampling point (deterministic per request, spread across
  requests, so pulls of a widely cached prefix do not all hit one replica).
* PreRequest: the computing endpoint is the ``prefillProfileName`` profile's target when it
  ran, else the primary target. When the drawn peer is another endpoint and holds at least
  ``minCachedTokenDelta`` more cached tokens than the computing one, the request carries
  ``x-kv-cache-source-host-port: <peer ip:port>`` to the model server, whose P2P connector
  pulls those blocks instead of recomputing them (the header does nothing otherwise).
* **Differences from llm-d:** kvgate's match info has no per-tier counts, so every cached
  block counts where llm-d, given tiers, counts the CPU tier only; a client-sent
  ``x-kv-cache-source-host-port`` is replaced when kvgate sets one, and passes through
  when it does not (llm-d always removes it).
* Parameters (llm-d's): ``prefixMatchInfoProducerName`` (the prefix producer, default
  ``approx-prefix-cache-producer``), ``minCachedTokenDelta`` (>= 1, 1),
  ``prefillProfileName`` (``prefill``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import CycleState, Endpoint, Request, SchedulingResult

TYPE = "p2p-source-producer"

#: The header the model server's P2P connector reads (llm-d's ``KVCacheSourceHeader``).
HEADER_KV_CACHE_SOURCE = "x-kv-cache-source-host-port"

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def spread_fraction(request_id: str) -> float:
    """FNV-1a (32-bit) of ``request_id`` as a fraction in [0, 1)."""
    h = _FNV32_OFFSET
    for byte in request_id.encode():
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h / float(1 << 32)


@dataclass(frozen=True, slots=True)
class _Peer:
    hostport: str
    cached_tokens: int


def _cached_tokens(info: PrefixCacheMatchInfo | None) -> int:
    return info.cached_block_count * info.block_size_tokens if info is not None else 0


class P2PSourceProducer:
    """Producer + PreRequest (see the module docstring)."""

    type_name = TYPE
    strict_notes = (
        "every cached block counts (llm-d counts the CPU tier only when it has per-tier "
        "data); a client-sent x-kv-cache-source-host-port passes through when kvgate sets none",
    )

    def __init__(
        self,
        name: str,
        *,
        prefix_producer: str = "approx-prefix-cache-producer",
        min_cached_token_delta: int = 1,
        prefill_profile: str = "prefill",
    ) -> None:
        self.name = name
        self.prefix_key = DataKey(data.PREFIX_CACHE_MATCH_INFO, prefix_producer)
        self.min_cached_token_delta = min_cached_token_delta
        self.prefill_profile = prefill_profile
        self._peer_key = f"{TYPE}/{name}"

    def produces(self) -> tuple[DataKey, ...]:
        return ()

    def consumes(self) -> tuple[DataKey, ...]:
        return (self.prefix_key,)

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        infos = data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo) or {}
        cached = [(e, infos.get(e.name)) for e in endpoints]
        most = max((_cached_tokens(i) for _, i in cached), default=0)
        if most <= 0:
            return
        band: list[tuple[Endpoint, int, float]] = []
        for e, info in cached:
            tokens = _cached_tokens(info)
            if tokens > 0 and info is not None and tokens + info.block_size_tokens >= most:
                band.append((e, tokens, 1.0 / (1.0 + e.metrics.waiting_queue_size)))
        point = spread_fraction(request.request_id) * sum(w for _, _, w in band)
        chosen = band[-1]
        for entry in band:
            if point < entry[2]:
                chosen = entry
                break
            point -= entry[2]
        request.extra[self._peer_key] = _Peer(chosen[0].hostport, chosen[1])

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        peer = request.extra.get(self._peer_key)
        if not isinstance(peer, _Peer):
            return
        computing = result.profile_results.get(self.prefill_profile)
        if computing is None or not computing.targets:
            computing = result.profile_results.get(result.primary_profile_name)
        if computing is None or not computing.targets:
            return
        target = computing.targets[0]
        if peer.hostport == target.hostport:
            return
        infos = data.per_endpoint(request, self.prefix_key, PrefixCacheMatchInfo) or {}
        if peer.cached_tokens - _cached_tokens(infos.get(target.name)) >= (
            self.min_cached_token_delta
        ):
            headers[HEADER_KV_CACHE_SOURCE] = peer.hostport


def create(name: str, params: Params, ctx: PluginContext) -> P2PSourceProducer:
    return P2PSourceProducer(
        name,
        prefix_producer=params.get_str("prefixMatchInfoProducerName", "")
        or "approx-prefix-cache-producer",
        min_cached_token_delta=params.get_int("minCachedTokenDelta", 1, minimum=1),
        prefill_profile=params.get_str("prefillProfileName", "") or "prefill",
    )
