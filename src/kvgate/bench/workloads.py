"""Benchmark workloads: deterministic lists of sessions of prompts with exact token lengths.

A workload is a tuple of :class:`Session`s; a session is one or more :class:`Turn`s sent one
after the other (a single-turn workload has one turn per session). The runner's arrival
process starts sessions; the turns of a session follow each other with ``think_time_s``.

Text is built from a vocabulary of lower-case words that the simulator's tokenizer
(:meth:`kvgate.kvcache.tokenize.Tokenizer.default`, SmolLM2's BPE, the same ids real vLLM
serving SmolLM2 computes) encodes as exactly one token each, with a leading space. The
pre-tokenizer splits at every space, so a string of ``n`` such words is exactly ``n`` tokens
and concatenations add up; ``prompt_tokens`` of a completions turn is therefore exact
without tokenizing (tests check it against the tokenizer). Everything is seeded.

Workloads (fields are set with ``-W key=value`` on the command line):

- ``shared-prefix``: inference-perf's ``shared_prefix``: ``num_groups`` groups, each with
  one system prompt of ``system_prompt_len`` tokens and ``prompts_per_group`` questions of
  ``question_len`` tokens; ``output_len`` tokens out; ``turns`` > 1 makes every prompt a
  conversation that resends its history (inference-perf's ``enable_multi_turn_chat``).
- ``multi-turn``: ``num_sessions`` conversations of ``turns`` turns each resending the
  whole history, ``think_time_s`` between turns (production-stack's multi-round QA).
- ``long-doc-qa``: ``num_docs`` documents of ``doc_len`` tokens, ``num_questions`` short
  questions each about one document.
- ``random``: ShareGPT-like log-normal input and output lengths.
- ``long-prompt``: ``num_requests`` distinct prompts of ``input_len`` tokens (8000) and
  ``output_len`` (200) out, no shared prefix: where P/D pays (prefill chunks no longer
  stall the decoding requests).
- ``short-prompt``: the same with 128 tokens in and 200 out: where P/D does not pay.
- ``memory-pressure``: ``shared-prefix`` sized past the cluster's GPU KV cache (32 groups x
  4000-token prefixes) so prefixes are evicted between reuses: a CPU tier keeps them.
- ``multi-tenant``: an interactive tenant beside a batch tenant flooding the pool, with
  llm-d's fairness-id and objective headers (:mod:`kvgate.bench.tenants`).
- ``mixed``: a shared production pool for capacity at SLO: prompts 100–16k tokens and
  outputs 10–1,000, log-normal; Zipf-popular shared prefixes; two SLO classes sent as
  ``x-slo-*`` headers (:mod:`kvgate.bench.mixed`).
- ``sharegpt``: ShareGPT conversations (``-W path=FILE``) sampled as ``vllm bench serve``
  does (:mod:`kvgate.bench.sharegpt`).
- ``trace``: replay of a JSONL file: one request a line with ``timestamp`` (ms, Mooncake's
  format; or ``timestamp_s``), ``input_length``, ``output_length`` and optional ``hash_ids``
  (ids of ``hash_block_len``-token blocks; equal ids mean equal text, so prefixes are shared).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

from kvgate.bench.mixed import MixedParams, mixed
from kvgate.bench.sharegpt import ShareGPTParams, sharegpt
from kvgate.bench.tenants import MultiTenantParams, multi_tenant
from kvgate.errors import KvgateError

Api = Literal["completions", "chat"]


class WorkloadError(KvgateError):
    """A workload name or parameter is wrong."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One request. ``prompt`` for /v1/completions, ``messages`` for /v1/chat/completions."""

    prompt: str | None
    messages: tuple[Mapping[str, str], ...] | None
    prompt_tokens: int  # exact prompt length as the server tokenizes it
    max_tokens: int  # output tokens asked for (sent with ignore_eos)
    think_time_s: float = 0.0  # pause after the previous turn of the session ended
    group: str = ""  # the prefix group, for analysis


@dataclass(frozen=True, slots=True)
class Session:
    """Turns sent in order; ``arrival_s`` is the start offset for trace replay (else None)."""

    session_id: str
    turns: tuple[Turn, ...]
    arrival_s: float | None = None
    warmup: bool = False  # sent before the measured phase and not recorded
    tenant: str = ""  # who sends it (multi-tenant); recorded with every request
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers of every turn


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    api: Api
    sessions: tuple[Session, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        """Measured requests (warm-up sessions excluded)."""
        return sum(len(s.turns) for s in self.sessions if not s.warmup)

    @property
    def is_trace(self) -> bool:
        return any(s.arrival_s is not None for s in self.sessions)

    def prompt_tokens(self) -> list[int]:
        return [t.prompt_tokens for s in self.sessions if not s.warmup for t in s.turns]

    def output_tokens(self) -> list[int]:
        return [t.max_tokens for s in self.sessions if not s.warmup for t in s.turns]


# --- text of exact token lengths ---------------------------------------------------------------


@lru_cache(maxsize=4)
def single_token_words(tokenizer_path: str | None = None) -> tuple[str, ...]:
    """Words (with a leading space) that the tokenizer encodes as exactly one token, sorted."""
    from kvgate.kvcache.tokenize import Tokenizer

    tok = Tokenizer.default() if tokenizer_path is None else Tokenizer.from_path(tokenizer_path)
    vocab = tok.hf.get_vocab()
    words = []
    for piece, token_id in vocab.items():
        # byte-level BPE writes a leading space as "Ġ"
        if piece.startswith("Ġ") and re.fullmatch(r"[a-z]{2,12}", piece[1:]):
            word = " " + piece[1:]
            if tok.encode(word, add_special_tokens=False) == [token_id]:
                words.append(word)
    if len(words) < 1000:
        raise WorkloadError(f"tokenizer {tok.name}: only {len(words)} single-token words")
    return tuple(sorted(words))


@lru_cache(maxsize=4)
def word_cum_weights(tokenizer_path: str | None = None) -> tuple[float, ...]:
    """Cumulative draw weights for :func:`single_token_words`, favouring short words.

    Weight ``len(word) ** -5`` gives about 4.4 characters per token (the leading space
    included) with an effective vocabulary of ~4,700 words: the density of English text
    under GPT-style BPE tokenizers, and what llm-d's approximate prefix scorer assumes
    (4 characters per token). A uniform draw over the vocabulary would give ~8 characters
    per token and make every character-based estimate of cache contents off by 2x.
    """
    return tuple(accumulate(len(w) ** -5.0 for w in single_token_words(tokenizer_path)))


def draw_words(rng: random.Random, k: int, tokenizer_path: str | None = None) -> list[str]:
    """``k`` single-token words drawn with :func:`word_cum_weights`."""
    words = single_token_words(tokenizer_path)
    return rng.choices(words, cum_weights=word_cum_weights(tokenizer_path), k=k)


class TextGen:
    """Seeded text of exact token lengths (about 4.4 characters per token)."""

    def __init__(self, seed: int, tokenizer_path: str | None = None) -> None:
        self._rng = random.Random(seed)
        self._tokenizer_path = tokenizer_path

    def text(self, num_tokens: int) -> str:
        return "".join(draw_words(self._rng, num_tokens, self._tokenizer_path))


def chat_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    from kvgate.kvcache.tokenize import Tokenizer

    return len(Tokenizer.default().encode_chat(messages))


def _turn(
    api: Api,
    parts: Sequence[tuple[str, str]],
    num_tokens: int,
    max_tokens: int,
    think_time_s: float = 0.0,
    group: str = "",
) -> Turn:
    """A turn from (role, text) parts; completions concatenates the texts (``num_tokens``)."""
    if api == "completions":
        return Turn("".join(t for _, t in parts), None, num_tokens, max_tokens, think_time_s, group)
    messages = tuple({"role": role, "content": text.lstrip()} for role, text in parts)
    return Turn(None, messages, chat_prompt_tokens(messages), max_tokens, think_time_s, group)


# --- the workloads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedPrefixParams:
    num_groups: int = 10
    prompts_per_group: int = 10
    system_prompt_len: int = 100
    question_len: int = 50
    output_len: int = 50
    turns: int = 1  # > 1: every prompt is a conversation resending its history
    think_time_s: float = 0.0
    order: str = "random"  # random (seeded shuffle) | grouped (a group's prompts back to back)
    warmup_per_group: int = 0  # extra prompts per group sent first, not measured


@dataclass(frozen=True, slots=True)
class MultiTurnParams:
    num_sessions: int = 20
    turns: int = 5
    system_prompt_len: int = 200  # shared by every session
    question_len: int = 100
    output_len: int = 100
    think_time_s: float = 1.0


@dataclass(frozen=True, slots=True)
class LongDocQaParams:
    num_docs: int = 4
    doc_len: int = 8000
    num_questions: int = 100
    question_len: int = 32
    output_len: int = 64


@dataclass(frozen=True, slots=True)
class RandomParams:
    num_requests: int = 200
    # ShareGPT: log-normal lengths, median input ~ 160 / output ~ 120 tokens
    input_median: float = 160.0
    input_sigma: float = 1.0
    output_median: float = 120.0
    output_sigma: float = 0.9
    min_len: int = 4
    max_input_len: int = 4096
    max_output_len: int = 1024


@dataclass(frozen=True, slots=True)
class LongPromptParams:
    num_requests: int = 600
    input_len: int = 8000
    output_len: int = 200


@dataclass(frozen=True, slots=True)
class ShortPromptParams(LongPromptParams):
    num_requests: int = 1200
    input_len: int = 128


@dataclass(frozen=True, slots=True)
class MemoryPressureParams(SharedPrefixParams):
    num_groups: int = 32
    prompts_per_group: int = 6
    system_prompt_len: int = 4000
    question_len: int = 100
    output_len: int = 32
    warmup_per_group: int = 1


@dataclass(frozen=True, slots=True)
class TraceParams:
    path: str = ""
    time_scale: float = 1.0  # multiply the timestamps (0.5 = twice as fast)
    hash_block_len: int = 512  # tokens per hash_id (Mooncake uses 512)
    max_requests: int = 0  # 0 = all


def shared_prefix(p: SharedPrefixParams, api: Api, seed: int) -> list[Session]:
    gen = TextGen(seed)
    systems = [gen.text(p.system_prompt_len) for _ in range(p.num_groups)]
    sessions: list[Session] = []
    for g in range(p.num_groups):
        for i in range(p.prompts_per_group + p.warmup_per_group):
            parts: list[tuple[str, str]] = [("system", systems[g])]
            num = p.system_prompt_len
            turns: list[Turn] = []
            for k in range(p.turns):
                parts.append(("user", gen.text(p.question_len)))
                num += p.question_len
                think = p.think_time_s if k else 0.0
                turns.append(_turn(api, parts, num, p.output_len, think, f"g{g}"))
                parts.append(("assistant", gen.text(p.output_len)))
                num += p.output_len
            warm = i >= p.prompts_per_group
            sessions.append(Session(f"g{g}-{'w' if warm else 'p'}{i}", tuple(turns), warmup=warm))
    measured = [s for s in sessions if not s.warmup]
    # warm-up: every group's first warm-up prompt, then the second ..., groups in order
    warmup = sorted(
        (s for s in sessions if s.warmup), key=lambda s: int(s.session_id.split("w")[-1])
    )
    if p.order == "random":
        random.Random(seed + 1).shuffle(measured)
    elif p.order != "grouped":
        raise WorkloadError(f"shared-prefix: order: expected random or grouped, got {p.order!r}")
    return warmup + measured


def distinct_prompts(p: LongPromptParams, api: Api, seed: int) -> list[Session]:
    """``num_requests`` prompts of exactly ``input_len`` tokens, no two sharing a block."""
    gen = TextGen(seed)
    return [
        Session(
            f"r{i}",
            (
                _turn(
                    api, [("user", gen.text(p.input_len))], p.input_len, p.output_len, 0.0, f"r{i}"
                ),
            ),
        )
        for i in range(p.num_requests)
    ]


def multi_turn(p: MultiTurnParams, api: Api, seed: int) -> list[Session]:
    gen = TextGen(seed)
    system = gen.text(p.system_prompt_len)
    sessions = []
    for s in range(p.num_sessions):
        parts: list[tuple[str, str]] = [("system", system)]
        num = p.system_prompt_len
        turns = []
        for k in range(p.turns):
            parts.append(("user", gen.text(p.question_len)))
            num += p.question_len
            turns.append(_turn(api, parts, num, p.output_len, p.think_time_s if k else 0.0, "s"))
            parts.append(("assistant", gen.text(p.output_len)))
            num += p.output_len
        sessions.append(Session(f"s{s}", tuple(turns)))
    return sessions


def long_doc_qa(p: LongDocQaParams, api: Api, seed: int) -> list[Session]:
    gen = TextGen(seed)
    docs = [gen.text(p.doc_len) for _ in range(p.num_docs)]
    rng = random.Random(seed + 1)
    sessions = []
    for q in range(p.num_questions):
        d = rng.randrange(p.num_docs)
        parts = [("system", docs[d]), ("user", gen.text(p.question_len))]
        turn = _turn(api, parts, p.doc_len + p.question_len, p.output_len, group=f"d{d}")
        sessions.append(Session(f"q{q}", (turn,)))
    return sessions


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.lognormvariate(math.log(median), sigma))))


def random_lengths(p: RandomParams, api: Api, seed: int) -> list[Session]:
    gen = TextGen(seed)
    rng = random.Random(seed + 1)
    sessions = []
    for r in range(p.num_requests):
        n_in = _lognormal(rng, p.input_median, p.input_sigma, p.min_len, p.max_input_len)
        n_out = _lognormal(rng, p.output_median, p.output_sigma, p.min_len, p.max_output_len)
        sessions.append(Session(f"r{r}", (_turn(api, [("user", gen.text(n_in))], n_in, n_out),)))
    return sessions


def trace(p: TraceParams, api: Api, seed: int) -> list[Session]:
    if not p.path:
        raise WorkloadError("trace: set -W path=FILE.jsonl")
    gen = TextGen(seed)
    sessions = []
    t0: float | None = None
    path = Path(p.path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"trace: cannot read {path}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "timestamp_s" in row:
                ts = float(row["timestamp_s"])
            else:
                ts = float(row["timestamp"]) / 1000.0
            n_in = int(row["input_length"])
            n_out = int(row["output_length"])
            hash_ids = [int(h) for h in row.get("hash_ids", ())]
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkloadError(
                f"{path}:{lineno}: expected timestamp (ms) or timestamp_s, input_length, "
                f"output_length and optional hash_ids: {exc}"
            ) from exc
        t0 = ts if t0 is None else t0
        chunks = []
        remaining = n_in
        for h in hash_ids:
            take = min(p.hash_block_len, remaining)
            if take <= 0:
                break
            chunks.append("".join(_block_words(f"{seed}/{h}", p.hash_block_len)[:take]))
            remaining -= take
        if remaining > 0:
            chunks.append(gen.text(remaining))
        turn = _turn(api, [("user", "".join(chunks))], n_in, max(1, n_out))
        sessions.append(Session(f"t{lineno}", (turn,), (ts - t0) * p.time_scale))
        if p.max_requests and len(sessions) >= p.max_requests:
            break
    sessions.sort(key=lambda s: s.arrival_s or 0.0)
    return sessions


@lru_cache(maxsize=4096)
def _block_words(key: str, block_len: int) -> tuple[str, ...]:
    """The words of trace block ``key``: equal hash ids give equal text, hence shared prefixes."""
    return tuple(draw_words(random.Random(key), block_len))


_BUILDERS: dict[str, tuple[type[Any], Callable[[Any, Api, int], list[Session]]]] = {
    "shared-prefix": (SharedPrefixParams, shared_prefix),
    "multi-turn": (MultiTurnParams, multi_turn),
    "long-doc-qa": (LongDocQaParams, long_doc_qa),
    "random": (RandomParams, random_lengths),
    "long-prompt": (LongPromptParams, distinct_prompts),
    "short-prompt": (ShortPromptParams, distinct_prompts),
    "memory-pressure": (MemoryPressureParams, shared_prefix),
    "trace": (TraceParams, trace),
    "multi-tenant": (MultiTenantParams, multi_tenant),
    "mixed": (MixedParams, mixed),
    "sharegpt": (ShareGPTParams, sharegpt),
}

WORKLOAD_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def workload_fields(name: str) -> dict[str, Any]:
    """The parameters of a workload with their defaults."""
    params_cls, _ = _lookup(name)
    return {f.name: f.default for f in fields(params_cls)}


def _lookup(name: str) -> tuple[type[Any], Callable[[Any, Api, int], list[Session]]]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise WorkloadError(
            f"unknown workload {name!r} (known: {', '.join(WORKLOAD_NAMES)})"
        ) from None


def _coerce(name: str, key: str, default: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise WorkloadError(
            f"{name}: {key}: expected {type(default).__name__}, got {value!r}"
        ) from None
    return value


def build_workload(
    name: str, params: Mapping[str, Any] | None = None, *, api: Api = "completions", seed: int = 0
) -> Workload:
    """Build workload ``name`` with ``params`` overriding its defaults (strings are parsed)."""
    params_cls, builder = _lookup(name)
    defaults = workload_fields(name)
    values: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in defaults:
            raise WorkloadError(
                f"{name}: unknown parameter {key!r} (known: {', '.join(sorted(defaults))})"
            )
        values[key] = _coerce(name, key, defaults[key], value)
    p = params_cls(**values)
    for key in defaults:
        v = getattr(p, key)
        if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise WorkloadError(f"{name}: {key}: expected a number >= 0, got {v}")
    sessions = builder(p, api, seed)
    return Workload(name, api, tuple(sessions), {**defaults, **values})


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> dict (the ``-W`` options)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkloadError(f"-W {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
