"""Prefill/decode KV transfer in the simulator, in the shape of vLLM's ``NixlConnector``.

``kvgate sim --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'``
makes the replica one side (or both sides) of a P/D pair:

* **Prefill leg** (``kv_producer`` or ``kv_both``): a request whose body carries
  ``kv_transfer_params: {"do_remote_decode": true}`` is computed as usual (the routing
  sidecar sends it with ``max_tokens: 1``); when it finishes its answer carries, as vLLM's
  connector returns them, ``kv_transfer_params: {do_remote_prefill: true, do_remote_decode:
  false, remote_block_ids, remote_engine_id, remote_request_id, remote_host, remote_port,
  tp_size}``. Host and port are vLLM's NIXL side channel (``VLLM_NIXL_SIDE_CHANNEL_HOST``,
  default ``localhost``; ``VLLM_NIXL_SIDE_CHANNEL_PORT``, default 5600).
* **Decode leg** (``kv_consumer`` or ``kv_both``): a request carrying those params with
  ``do_remote_prefill: true`` does not recompute its prompt. The blocks it does not hold
  locally are "pulled": the request waits ``transfer_fixed_ms + bytes / link bandwidth``
  (model time, divided by ``--speed``), bytes = uncached prompt tokens × the profile's
  ``kv_bytes_per_token``; then it enters the engine with every prompt token but the last
  computed (vLLM recomputes the last one), so ``usage.prompt_tokens_details.cached_tokens``
  covers the transferred prefix and the received full blocks are cached and published as
  ``BlockStored`` events, as vLLM's decode instance does.

Link presets (``kv_connector_extra_config.sim_link``): ``nvlink`` 450 GB/s and 0.5 ms fixed
(one direction of H100 NVLink 4, same node); ``rdma`` 50 GB/s and 2 ms fixed (one 400 Gb/s
NDR InfiniBand / RoCE NIC, across nodes; the default). ``sim_link_gbps`` (GB/s) and
``sim_transfer_fixed_ms`` override them; ``sim_kv_bytes_per_token`` overrides the profile's.

Differences from vLLM kept on purpose: the prefill replica frees its blocks when the request
finishes (they stay in its prefix cache) instead of holding them until the decode side has
read them, and no bytes move: the decode replica has the prompt and computes the same block
hashes itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LINK_PRESETS", "KVTransferConfig", "LinkPreset", "parse_kv_transfer_config"]

ROLES = ("kv_both", "kv_producer", "kv_consumer")
CONNECTORS = ("NixlConnector",)
_FIELDS = ("kv_connector", "kv_role", "engine_id", "kv_connector_extra_config")
_EXTRA = ("sim_link", "sim_link_gbps", "sim_transfer_fixed_ms", "sim_kv_bytes_per_token")
FLAG = "--kv-transfer-config"


@dataclass(frozen=True, slots=True)
class LinkPreset:
    """A KV link between a prefill and a decode replica."""

    gbytes_per_s: float  # one direction, 10^9 bytes a second
    fixed_ms: float  # per transfer: handshake, notification, descriptor setup


LINK_PRESETS: dict[str, LinkPreset] = {
    "nvlink": LinkPreset(450.0, 0.5),
    "rdma": LinkPreset(50.0, 2.0),
}


@dataclass(frozen=True, slots=True)
class KVTransferConfig:
    """What ``--kv-transfer-config`` asked for, validated."""

    kv_connector: str
    kv_role: str
    engine_id: str
    link: str = "rdma"
    gbytes_per_s: float = LINK_PRESETS["rdma"].gbytes_per_s
    fixed_ms: float = LINK_PRESETS["rdma"].fixed_ms
    kv_bytes_per_token: int = 0  # 0: the profile's
    side_channel_host: str = "localhost"
    side_channel_port: int = 5600
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_producer(self) -> bool:
        return self.kv_role in ("kv_both", "kv_producer")

    @property
    def is_consumer(self) -> bool:
        return self.kv_role in ("kv_both", "kv_consumer")

    def transfer_s(self, num_tokens: int, kv_bytes_per_token: int) -> float:
        """Model seconds to pull ``num_tokens`` tokens of KV over the link."""
        if num_tokens <= 0:
            return 0.0
        per_token = self.kv_bytes_per_token or kv_bytes_per_token
        return self.fixed_ms / 1000.0 + num_tokens * per_token / (self.gbytes_per_s * 1e9)

    def producer_params(
        self, request_id: str, block_ids: list[int], tp_size: int = 1
    ) -> dict[str, Any]:
        """The ``kv_transfer_params`` a finished prefill returns (vLLM's NIXL shape)."""
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": block_ids,
            "remote_engine_id": self.engine_id,
            "remote_request_id": request_id,
            "remote_host": self.side_channel_host,
            "remote_port": self.side_channel_port,
            "tp_size": tp_size,
        }


def _number(name: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (positive and value <= 0):
        raise ValueError(f"{FLAG}: kv_connector_extra_config.{name}: expected a positive number")
    return float(value)


def json_object(flag: str, text: str) -> dict[str, Any]:
    """A flag's JSON object value; ValueError naming the flag otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{flag}: expected a JSON object")
    return data


def parse_kv_transfer_config(
    text: str, *, env: dict[str, str] | None = None, default_engine_id: str = ""
) -> KVTransferConfig:
    """Parse vLLM's ``--kv-transfer-config`` JSON; raises ValueError naming the field."""
    environ = os.environ if env is None else env
    data = json_object(FLAG, text)
    for key in data:
        if key not in _FIELDS:
            raise ValueError(
                f"{FLAG}: {key}: not simulated (the simulator reads: {', '.join(_FIELDS)})"
            )
    connector = data.get("kv_connector")
    if connector not in CONNECTORS:
        raise ValueError(
            f"{FLAG}: kv_connector: expected one of {', '.join(CONNECTORS)}, got {connector!r}"
        )
    role = data.get("kv_role")
    if role not in ROLES:
        raise ValueError(f"{FLAG}: kv_role: expected one of {', '.join(ROLES)}, got {role!r}")
    engine_id = data.get("engine_id") or default_engine_id
    if not isinstance(engine_id, str):
        raise ValueError(f"{FLAG}: engine_id: expected a string")
    extra = data.get("kv_connector_extra_config") or {}
    if not isinstance(extra, dict):
        raise ValueError(f"{FLAG}: kv_connector_extra_config: expected an object")
    for key in extra:
        if key not in _EXTRA:
            raise ValueError(
                f"{FLAG}: kv_connector_extra_config.{key}: not simulated "
                f"(the simulator reads: {', '.join(_EXTRA)})"
            )
    link = extra.get("sim_link", "rdma")
    if link not in LINK_PRESETS:
        raise ValueError(
            f"{FLAG}: kv_connector_extra_config.sim_link: expected one of "
            f"{', '.join(LINK_PRESETS)}, got {link!r}"
        )
    preset = LINK_PRESETS[link]
    gbps = preset.gbytes_per_s
    if "sim_link_gbps" in extra:
        gbps = _number("sim_link_gbps", extra["sim_link_gbps"])
    fixed = preset.fixed_ms
    if "sim_transfer_fixed_ms" in extra:
        fixed = _number("sim_transfer_fixed_ms", extra["sim_transfer_fixed_ms"], positive=False)
        if fixed < 0:
            raise ValueError(f"{FLAG}: kv_connector_extra_config.sim_transfer_fixed_ms: >= 0")
    per_token = 0
    if "sim_kv_bytes_per_token" in extra:
        per_token = int(_number("sim_kv_bytes_per_token", extra["sim_kv_bytes_per_token"]))
    port_text = environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600")
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ValueError(
            f"VLLM_NIXL_SIDE_CHANNEL_PORT: expected a port, got {port_text!r}"
        ) from exc
    return KVTransferConfig(
        kv_connector=str(connector),
        kv_role=str(role),
        engine_id=engine_id,
        link=str(link),
        gbytes_per_s=gbps,
        fixed_ms=fixed,
        kv_bytes_per_token=per_token,
        side_channel_host=environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost"),
        side_channel_port=port,
        extra=dict(extra),
    )
