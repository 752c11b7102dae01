"""Turn ``kvgate sim`` arguments into :class:`~kvgate.sim.server.SimSettings`.

Order of precedence: flags > ``--kv-events-config`` > profile > built-in defaults.
Raises ValueError with a message naming the flag for anything invalid.
"""

from __future__ import annotations

import argparse
import json
import logging

from kvgate.kvcache.hashing import HASH_ALGOS
from kvgate.sim.encoder import parse_ec_transfer_config
from kvgate.sim.engine import LoraAdapter
from kvgate.sim.kvtransfer import KVTransferConfig, parse_kv_transfer_config
from kvgate.sim.profiles import DEFAULT_PROFILE, Profile, load_profile
from kvgate.sim.publisher import parse_kv_events_config, parse_publish_faults
from kvgate.sim.state import FAILURE_KINDS, SimSettings
from kvgate.sim.tls import tls_from_flags

__all__ = ["parse_lora_modules", "settings_from_args"]

log = logging.getLogger("kvgate.sim")


def parse_lora_modules(values: list[str]) -> list[LoraAdapter]:
    """``name=path`` or vLLM's JSON form ``{"name": ..., "path": ...}``."""
    out: list[LoraAdapter] = []
    for value in values:
        value = value.strip()
        if value.startswith("{"):
            try:
                data = json.loads(value)
                name, path = str(data["name"]), str(data["path"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"--lora-modules: invalid JSON entry {value!r}: {exc}") from exc
        elif "=" in value:
            name, path = value.split("=", 1)
        else:
            raise ValueError(f"--lora-modules: expected name=path, got {value!r}")
        if not name:
            raise ValueError(f"--lora-modules: empty adapter name in {value!r}")
        if any(a.name == name for a in out):
            raise ValueError(f"--lora-modules: adapter {name!r} given twice")
        out.append(LoraAdapter(name=name, path=path, lora_id=len(out) + 1))
    return out


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    profile = load_profile(args.profile or DEFAULT_PROFILE)
    for flag, value in (
        ("--block-size", args.block_size),
        ("--num-gpu-blocks", args.num_gpu_blocks),
        ("--max-num-seqs", args.max_num_seqs),
        ("--max-num-batched-tokens", args.max_num_batched_tokens),
        ("--max-model-len", args.max_model_len),
        ("--speed", args.speed),
        ("--max-loras", args.max_loras),
    ):
        _positive(flag, value)
    profile = profile.with_overrides(
        block_size=args.block_size,
        num_gpu_blocks=args.num_gpu_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
    )
    capacity = profile.num_gpu_blocks * profile.block_size
    if profile.max_model_len > capacity:
        if args.max_model_len is not None:
            raise ValueError(
                f"--max-model-len {profile.max_model_len} does not fit the KV cache "
                f"({profile.num_gpu_blocks} blocks x {profile.block_size} = {capacity} tokens)"
            )
        # As vLLM does when the model's own context exceeds the cache: cap it.
        profile = profile.with_overrides(max_model_len=capacity)
    if args.prefix_caching_hash_algo not in HASH_ALGOS:
        raise ValueError(
            f"--prefix-caching-hash-algo: unsupported {args.prefix_caching_hash_algo!r}"
        )
    kinds = tuple(k.strip() for k in args.failure_kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAILURE_KINDS]
    if bad or not kinds:
        raise ValueError(
            f"--failure-kinds: unknown {bad or kinds} (known: {', '.join(FAILURE_KINDS)})"
        )
    rate = args.failure_rate
    if rate > 1:  # llm-d-inference-sim takes a percentage
        rate = rate / 100.0
    if not 0 <= rate <= 1:
        raise ValueError(f"--failure-rate must be within 0..1, got {args.failure_rate}")
    if args.kv_offload_blocks < 0:
        raise ValueError("--kv-offload-blocks must be >= 0")
    if not 0 <= args.emit_lead_max_ms <= 1000:
        raise ValueError(f"--emit-lead-max-ms must be within 0..1000, got {args.emit_lead_max_ms}")
    if args.read_timeout <= 0:
        raise ValueError(f"--read-timeout must be > 0 seconds, got {args.read_timeout}")
    if args.mm_encode_ms < 0:
        raise ValueError(f"--mm-encode-ms must be >= 0, got {args.mm_encode_ms}")
    if args.mm_encoder_cache_items < 1:
        raise ValueError(
            f"--mm-encoder-cache-items must be >= 1, got {args.mm_encoder_cache_items}"
        )
    if args.stream_interval < 1:
        raise ValueError(f"--stream-interval must be >= 1, got {args.stream_interval}")

    endpoint = args.kv_events_endpoint
    topic = args.kv_events_topic
    replay = args.kv_events_replay_endpoint
    buffer_steps, hwm = 10_000, 100_000
    if args.kv_events_config:
        ev = parse_kv_events_config(args.kv_events_config)
        if ev.enable_kv_cache_events and ev.publisher == "zmq":
            endpoint = endpoint or ev.endpoint
            topic = topic or ev.topic or None
            replay = replay or ev.replay_endpoint
            buffer_steps, hwm = ev.buffer_steps, ev.hwm
    served = list(args.served_model_name or [args.model])
    return SimSettings(
        host=args.host,
        port=args.port,
        model=args.model,
        served_model_names=served,
        profile=profile,
        speed=args.speed,
        tokenizer_path=args.tokenizer,
        mode=args.mode,
        stream_interval=args.stream_interval,
        emit_lead_max_s=args.emit_lead_max_ms / 1000.0,
        seed=args.seed,
        hash_algo=args.prefix_caching_hash_algo,
        kv_events_endpoint=endpoint,
        kv_events_topic=topic,
        kv_events_replay_endpoint=replay,
        kv_events_format=args.kv_events_format,
        kv_events_buffer_steps=buffer_steps,
        kv_events_hwm=hwm,
        kv_events_fault=parse_publish_faults(args.kv_events_fault),
        kv_offload_blocks=args.kv_offload_blocks,
        lora_modules=parse_lora_modules(args.lora_modules),
        lora_enabled=bool(args.enable_lora or args.lora_modules),
        max_loras=args.max_loras,
        failure_rate=rate,
        failure_kinds=kinds,
        startup_delay_s=args.startup_delay,
        legacy_gpu_cache_usage_metric=args.legacy_gpu_cache_usage_metric,
        enable_prefix_caching=args.enable_prefix_caching,
        shutdown_timeout_s=args.shutdown_timeout,
        read_timeout_s=args.read_timeout,
        kv_transfer=_kv_transfer(args, profile),
        ec_transfer=(
            parse_ec_transfer_config(args.ec_transfer_config)
            if getattr(args, "ec_transfer_config", None)
            else None
        ),
        mm_encode_ms=args.mm_encode_ms,
        mm_encoder_cache_items=args.mm_encoder_cache_items,
        tls=tls_from_flags(
            args.ssl_certfile,
            args.ssl_keyfile,
            args.ssl_ca_certs,
            args.ssl_cert_reqs,
            args.enable_ssl_refresh,
        ),
    )


def _kv_transfer(args: argparse.Namespace, profile: Profile) -> KVTransferConfig | None:
    text = getattr(args, "kv_transfer_config", None)
    if not text:
        return None
    # vLLM's default engine id is a fresh UUID; a stable one per replica is easier to read
    config = parse_kv_transfer_config(text, default_engine_id=f"kvgate-sim-{args.port}")
    if config.is_consumer and not (config.kv_bytes_per_token or profile.kv_bytes_per_token):
        raise ValueError(
            f"--kv-transfer-config: profile {profile.name!r} has no kv_bytes_per_token; set "
            "kv_connector_extra_config.sim_kv_bytes_per_token"
        )
    return config
