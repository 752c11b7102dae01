"""The ``mixed`` workload: what a shared production pool sees, for capacity at SLO.

* prompt lengths from 100 to 16,000 tokens, log-normal (median ``prompt_median``, long tail);
* outputs from 10 to 1,000 tokens, log-normal (median ``output_median``);
* shared prefixes of varied popularity: ``num_prefixes`` system prompts (log-normal lengths),
  of which a request starts with one with probability ``prefix_share``, chosen by a Zipf law
  of exponent ``prefix_zipf`` (prefix 1 is the most popular, the tail is reused rarely);
* two SLO classes, sent with llm-d's headers ``x-slo-ttft-ms`` / ``x-slo-tpot-ms``:
  ``interactive`` (share ``interactive_share``) and ``batch``; the class is the session's
  tenant, so results can be read per class.

Deterministic for a seed; prompt lengths are exact (see :mod:`kvgate.bench.workloads`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workloads imports this module; the builder imports it back at call time
    from kvgate.bench.workloads import Api, Session

__all__ = ["MixedParams", "mixed"]


@dataclass(frozen=True, slots=True)
class MixedParams:
    num_requests: int = 1000
    prompt_median: int = 800
    prompt_sigma: float = 1.1
    min_prompt_len: int = 100
    max_prompt_len: int = 16000
    output_median: int = 100
    output_sigma: float = 1.0
    min_output_len: int = 10
    max_output_len: int = 1000
    num_prefixes: int = 40
    prefix_median: int = 1000
    prefix_share: float = 0.7
    prefix_zipf: float = 1.1
    interactive_share: float = 0.7
    interactive_ttft_ms: float = 1000.0
    interactive_tpot_ms: float = 50.0
    batch_ttft_ms: float = 10000.0
    batch_tpot_ms: float = 200.0


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.lognormvariate(math.log(max(median, 1)), sigma))))


def mixed(p: MixedParams, api: Api, seed: int) -> list[Session]:
    """The sessions of the ``mixed`` workload (one request each)."""
    from kvgate.bench.workloads import Session, TextGen, _turn

    rng = random.Random(seed + 7)
    gen = TextGen(seed)
    top = max(p.min_prompt_len, p.max_prompt_len - 20)
    prefixes = [
        gen.text(_lognormal(rng, p.prefix_median, 0.8, p.min_prompt_len // 2, top))
        for _ in range(p.num_prefixes)
    ]
    prefix_lens = [len(text.split(" ")) - 1 for text in prefixes]  # words carry a leading space
    zipf = list(accumulate(1.0 / (k + 1) ** p.prefix_zipf for k in range(p.num_prefixes)))
    classes = {
        "interactive": (
            ("x-slo-ttft-ms", f"{p.interactive_ttft_ms:g}"),
            ("x-slo-tpot-ms", f"{p.interactive_tpot_ms:g}"),
        ),
        "batch": (
            ("x-slo-ttft-ms", f"{p.batch_ttft_ms:g}"),
            ("x-slo-tpot-ms", f"{p.batch_tpot_ms:g}"),
        ),
    }
    sessions: list[Session] = []
    for i in range(p.num_requests):
        total = _lognormal(rng, p.prompt_median, p.prompt_sigma, p.min_prompt_len, p.max_prompt_len)
        output = _lognormal(
            rng, p.output_median, p.output_sigma, p.min_output_len, p.max_output_len
        )
        parts: list[tuple[str, str]] = []
        group = ""
        if prefixes and rng.random() < p.prefix_share:
            k = rng.choices(range(p.num_prefixes), cum_weights=zipf)[0]
            total = min(max(total, prefix_lens[k] + 20), p.max_prompt_len)
            parts.append(("system", prefixes[k]))
            group = f"prefix-{k}"
            suffix = total - prefix_lens[k]
        else:
            suffix = total
        parts.append(("user", gen.text(suffix)))
        cls = "interactive" if rng.random() < p.interactive_share else "batch"
        turn = _turn(api, parts, total, output, 0.0, group)
        sessions.append(Session(f"m{i}", (turn,), tenant=cls, headers=classes[cls]))
    return sessions
