"""Multimodal encoding in the simulator, and vLLM's encoder-cache (EC) transfer for E/P/D.

**Cost model** (stated, not fitted): each distinct image, video or audio part of a chat
request (kvgate.openai.multimodal; keyed by its hash) costs ``--mm-encode-ms`` model
milliseconds (default 20, the order of a ViT encoder's time for one ~1 MP image on an H100)
unless the replica's encoder cache holds it (an LRU of ``--mm-encoder-cache-items`` items,
default 256; vLLM keeps encoder outputs for reuse too) or, on an EC consumer, the EC store
holds it. The parts are encoded one after another before the request enters the engine
(divided by ``--speed``, like the KV pull); encoding occupies no engine step, which a real
vision encoder does. The parts' placeholder tokens are not added to the prompt: the chat
template renders text parts only.

**EC transfer**, ``--ec-transfer-config`` (vLLM's JSON): ``ec_connector`` must be
``ECExampleConnector``; ``ec_role`` ``ec_producer`` (an encoder: after encoding a part it
writes ``<shared_storage_path>/<hash>``, an empty marker where vLLM writes the tensors) or
``ec_consumer`` (a prefill or prefill-decode server: a part whose marker exists is loaded,
free, instead of encoded); ``ec_connector_extra_config.shared_storage_path`` (required).

Counted in ``vllm:mm_cache_queries`` / ``vllm:mm_cache_hits`` (parts seen / found in the
encoder cache) and ``kvgate_sim_mm_items_total{source}`` (encoded, encoder_cache, ec_store).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvgate.scheduling.types import MMItem
from kvgate.sim.kvtransfer import json_object

__all__ = ["ECTransferConfig", "EncoderCache", "parse_ec_transfer_config"]

FLAG = "--ec-transfer-config"
ROLES = ("ec_producer", "ec_consumer")
CONNECTORS = ("ECExampleConnector",)
SOURCES = ("encoded", "encoder_cache", "ec_store")


@dataclass(frozen=True, slots=True)
class ECTransferConfig:
    """What ``--ec-transfer-config`` asked for, validated."""

    ec_connector: str
    ec_role: str
    shared_storage_path: Path

    @property
    def is_producer(self) -> bool:
        return self.ec_role == "ec_producer"


def parse_ec_transfer_config(text: str) -> ECTransferConfig:
    """Parse vLLM's ``--ec-transfer-config`` JSON; raises ValueError naming the field."""
    data = json_object(FLAG, text)
    for key in data:
        if key not in ("ec_connector", "ec_role", "ec_connector_extra_config", "engine_id"):
            raise ValueError(f"{FLAG}: {key}: not simulated")
    connector = data.get("ec_connector")
    if connector not in CONNECTORS:
        raise ValueError(f"{FLAG}: ec_connector: expected ECExampleConnector, got {connector!r}")
    role = data.get("ec_role")
    if role not in ROLES:
        raise ValueError(f"{FLAG}: ec_role: expected one of {', '.join(ROLES)}, got {role!r}")
    extra = data.get("ec_connector_extra_config") or {}
    if not isinstance(extra, dict) or set(extra) - {"shared_storage_path"}:
        raise ValueError(
            f"{FLAG}: ec_connector_extra_config: the simulator reads shared_storage_path only"
        )
    path = extra.get("shared_storage_path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{FLAG}: ec_connector_extra_config.shared_storage_path: required")
    return ECTransferConfig(str(connector), str(role), Path(path))


class EncoderCache:
    """One replica's encoder: its cache of encoded items and the EC store it shares."""

    def __init__(self, encode_ms: float, capacity: int, ec: ECTransferConfig | None = None) -> None:
        self.encode_ms = encode_ms
        self.capacity = capacity
        self.ec = ec
        self._held: dict[str, None] = {}  # recency order, oldest first
        self.counts = dict.fromkeys(SOURCES, 0)
        if ec is not None and ec.is_producer:
            ec.shared_storage_path.mkdir(parents=True, exist_ok=True)

    def prepare(self, items: Sequence[MMItem]) -> float:
        """Model seconds to make ``items``' embeddings ready (0 for a text request); the
        cache, the counters and (on a producer) the EC store are updated at once."""
        seconds = 0.0
        for mm_hash in dict.fromkeys(item.mm_hash for item in items):
            if mm_hash in self._held:
                source = "encoder_cache"
                del self._held[mm_hash]
            elif self._in_store(mm_hash):
                source = "ec_store"
            else:
                source = "encoded"
                seconds += self.encode_ms / 1000.0
                if self.ec is not None and self.ec.is_producer:
                    (self.ec.shared_storage_path / mm_hash).touch()
            self.counts[source] += 1
            self._held[mm_hash] = None
            if len(self._held) > self.capacity:
                del self._held[next(iter(self._held))]
        return seconds

    def _in_store(self, mm_hash: str) -> bool:
        ec = self.ec
        return ec is not None and not ec.is_producer and (ec.shared_storage_path / mm_hash).exists()
