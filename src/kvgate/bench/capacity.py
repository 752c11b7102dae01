"""The pool's capacity for one request shape, estimated from a simulator profile.

Used to size an overload (``multi-tenant``'s batch tenant floods at a multiple of it) and to
read its result (batch throughput against capacity). The estimate is the steady state of a
replica that always has work: ``B = min(max_num_seqs, KV tokens // (prompt + output))``
requests decode together, so each request costs its own prefill plus a B-th of each of its
``output`` decode steps::

    ms_per_request = prefill_ms(prompt) + output · (d0 + d1·B + dctx·B·ctx) / B
    capacity_rps   = replicas · 1000 / ms_per_request          (ctx = prompt + output / 2)

It ignores chunked-prefill step overheads and preemption, so it errs a little high: the
measured throughput of a saturated pool lands at or somewhat below it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    replicas: int
    batch_per_replica: int  # B: requests decoding together on one replica
    ms_per_request: float  # one replica's engine time per request at B
    requests_per_s: float  # the pool's
    output_tok_s: float  # the pool's


def estimate_capacity(
    profile_name: str,
    replicas: int,
    prompt_tokens: int,
    output_tokens: int,
    *,
    num_gpu_blocks: int | None = None,
    block_size: int | None = None,
    max_num_seqs: int | None = None,
) -> CapacityEstimate:
    """Capacity of ``replicas`` simulated replicas of ``profile_name`` (overrides as the
    cluster sets them) for requests of ``prompt_tokens`` in, ``output_tokens`` out."""
    from kvgate.sim.profiles import load_profile

    if replicas < 1 or prompt_tokens < 1 or output_tokens < 1:
        raise ValueError(
            f"capacity: expected replicas, prompt and output tokens >= 1, got "
            f"{replicas}, {prompt_tokens}, {output_tokens}"
        )
    profile = load_profile(profile_name).with_overrides(
        num_gpu_blocks=num_gpu_blocks, block_size=block_size, max_num_seqs=max_num_seqs
    )
    lat = profile.latency
    kv_tokens = profile.num_gpu_blocks * profile.block_size
    batch = max(1, min(profile.max_num_seqs, kv_tokens // (prompt_tokens + output_tokens)))
    context = prompt_tokens + output_tokens / 2
    step_ms = (
        lat.decode_base_ms
        + lat.decode_ms_per_seq * batch
        + lat.decode_ms_per_context_token * batch * context
    )
    ms = lat.prefill_ms(prompt_tokens) + output_tokens * step_ms / batch
    rps = replicas * 1000.0 / ms
    return CapacityEstimate(replicas, batch, ms, rps, rps * output_tokens)
