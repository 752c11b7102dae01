"""Simulator profiles: engine sizes and the latency model of one GPU, stored as JSON.

A profile (``src/kvgate/data/sim-profiles/<name>.json``, schema in docs/sim.md) holds the
engine's defaults (block size, KV blocks, batch limits, context length) and the coefficients
of :class:`LatencyModel`. ``kvgate sim --profile NAME`` loads one; any flag overrides it.

The latency model prices one engine step (one forward pass over a continuous batch)::

    step_ms = overhead
            + Σ_prefill (b·n + c·n² + [ctx > 0]·(e0 + e1·ctx))   # n new tokens over ctx cached
            + d1·decode_seqs + dctx·Σ_decode ctx                 # one token for each decode
            + load_ms_per_block·blocks_loaded_from_cpu
    overhead = a (prefill only), d0 (decode only), max(a, d0) (mixed)

so a lone prefill of n tokens costs ``a + b·n + c·n²`` and a decode-only step of B requests
``d0 + d1·B``, exactly the fits of calibration/h100.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROFILE", "LatencyModel", "Profile", "load_profile", "profile_names"]

DEFAULT_PROFILE = "qwen3-0.6b-h100"


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Coefficients of one GPU's step time, all in milliseconds."""

    prefill_base_ms: float  # a: fixed cost of a step with prefill work
    prefill_ms_per_token: float  # b: per new prompt token
    prefill_ms_per_token_sq: float  # c: per (new tokens)² of one request (self-attention)
    cached_base_ms: float = 0.0  # e0: per prefilling request that has a cached context
    cached_ms_per_token: float = 0.0  # e1: per cached-context token of a prefilling request
    decode_base_ms: float = 0.0  # d0: fixed cost of a decode-only step
    decode_ms_per_seq: float = 0.0  # d1: per decoding request
    decode_ms_per_context_token: float = 0.0  # dctx: per context token of a decoding request
    offload_load_ms_per_block: float = 0.0  # copying one KV block from CPU back to GPU

    def prefill_ms(self, new_tokens: int, cached_tokens: int = 0) -> float:
        """Cost of one request's prefill chunk, without the step overhead."""
        n = new_tokens
        ms = self.prefill_ms_per_token * n + self.prefill_ms_per_token_sq * n * n
        if cached_tokens > 0:
            ms += self.cached_base_ms + self.cached_ms_per_token * cached_tokens
        return ms

    def step_ms(
        self,
        prefills: list[tuple[int, int]],
        decode_seqs: int,
        decode_context_tokens: int = 0,
        loaded_blocks: int = 0,
    ) -> float:
        """One step: ``prefills`` as (new_tokens, cached_context) per request, plus decodes."""
        if prefills:
            overhead = (
                max(self.prefill_base_ms, self.decode_base_ms)
                if decode_seqs
                else self.prefill_base_ms
            )
        elif decode_seqs:
            overhead = self.decode_base_ms
        else:
            overhead = 0.0
        ms = overhead
        for new, cached in prefills:
            ms += self.prefill_ms(new, cached)
        ms += self.decode_ms_per_seq * decode_seqs
        ms += self.decode_ms_per_context_token * decode_context_tokens
        ms += self.offload_load_ms_per_block * loaded_blocks
        return ms

    def ttft_ms(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """The model's time to first token of a lone request (one step, no chunking)."""
        return self.step_ms([(prompt_tokens - cached_tokens, cached_tokens)], 0)

    def decode_step_ms(self, batch: int) -> float:
        """The model's inter-token latency of a decode-only batch of ``batch`` requests."""
        return self.step_ms([], batch)


@dataclass(frozen=True, slots=True)
class Profile:
    """Engine sizes and latency coefficients for one model on one accelerator."""

    name: str
    latency: LatencyModel
    block_size: int = 16
    num_gpu_blocks: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    #: bytes of KV cache per token (2 · layers · kv_heads · head_dim · dtype bytes): P/D transfer
    kv_bytes_per_token: int = 0
    model: str = ""
    description: str = ""

    def with_overrides(self, **values: Any) -> Profile:
        """A copy with every non-None value replaced."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update({k: v for k, v in values.items() if v is not None})
        return Profile(**current)

    @classmethod
    def from_json(cls, data: dict[str, Any], origin: str) -> Profile:
        try:
            latency_data = dict(data["latency"])
            known = {f.name for f in fields(LatencyModel)}
            unknown = set(latency_data) - known
            if unknown:
                raise ValueError(
                    f"unknown latency field(s) {sorted(unknown)} (known: {sorted(known)})"
                )
            latency = LatencyModel(**{k: float(v) for k, v in latency_data.items()})
            return cls(
                name=str(data.get("name", origin)),
                latency=latency,
                block_size=int(data.get("block_size", 16)),
                num_gpu_blocks=int(data.get("num_gpu_blocks", 8192)),
                max_num_seqs=int(data.get("max_num_seqs", 256)),
                max_num_batched_tokens=int(data.get("max_num_batched_tokens", 8192)),
                max_model_len=int(data.get("max_model_len", 8192)),
                kv_bytes_per_token=int(data.get("kv_bytes_per_token", 0)),
                model=str(data.get("model", "")),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{origin}: invalid simulator profile: {exc}") from exc


def _profiles_dir() -> Path:
    return Path(str(resources.files("kvgate") / "data" / "sim-profiles"))


def profile_names() -> list[str]:
    """The names of the profiles shipped in the package."""
    return sorted(p.stem for p in _profiles_dir().glob("*.json"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile JSON file by path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = _profiles_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(
                f"unknown simulator profile {name_or_path!r} "
                f"(known: {', '.join(profile_names())}, or a path to a profile .json)"
            )
    return Profile.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
