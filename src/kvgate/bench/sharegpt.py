"""ShareGPT conversations as a workload (``--dataset sharegpt FILE``), sampled as
``vllm bench serve --dataset-name sharegpt`` does.

The file is ShareGPT's JSON: a list of ``{"conversations": [{"from": ..., "value": ...},
...]}``. Each conversation's first two turns are a prompt and its reference answer; the
prompt is sent as is and the answer's token count is the request's output length
(``output_len`` > 0 fixes it instead). As vLLM does, conversations with fewer than two turns
are skipped, and so are pairs whose prompt or answer is under 4 tokens, whose prompt is over
1,024 tokens or whose prompt and answer are over 2,048 together; the rest are shuffled with
the seed and the first ``num_requests`` kept. Token counts are the simulator's tokenizer's
(:meth:`kvgate.kvcache.tokenize.Tokenizer.default`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # workloads imports this module; the builder imports it back at call time
    from kvgate.bench.workloads import Api, Session, Turn

__all__ = ["ShareGPTParams", "sharegpt"]


@dataclass(frozen=True, slots=True)
class ShareGPTParams:
    path: str = ""
    num_requests: int = 1000
    output_len: int = 0  # 0: the reference answer's length


def _pairs(path: Path) -> list[tuple[str, str]]:
    from kvgate.bench.workloads import WorkloadError

    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkloadError(f"{path}: expected ShareGPT JSON: {exc}") from exc
    if not isinstance(doc, list):
        raise WorkloadError(f"{path}: expected a JSON list of conversations")
    out = []
    for i, item in enumerate(doc):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise WorkloadError(f"{path}: [{i}].conversations: expected a list of turns")
        if len(turns) < 2:
            continue
        values = [t.get("value") if isinstance(t, dict) else None for t in turns[:2]]
        if not all(isinstance(v, str) for v in values):
            raise WorkloadError(f"{path}: [{i}].conversations[0..1].value: expected strings")
        out.append((str(values[0]), str(values[1])))
    return out


def sharegpt(p: ShareGPTParams, api: Api, seed: int) -> list[Session]:
    """Sessions of one request each from the ShareGPT file ``p.path``."""
    from kvgate.bench.workloads import Session, WorkloadError, _turn
    from kvgate.kvcache.tokenize import Tokenizer

    if not p.path:
        raise WorkloadError("sharegpt: set the file with --dataset sharegpt FILE")
    pairs = _pairs(Path(p.path))
    random.Random(seed).shuffle(pairs)
    tokenizer = Tokenizer.default()
    sessions: list[Session] = []
    for prompt, answer in pairs:
        if len(sessions) >= p.num_requests:
            break
        prompt_len = len(tokenizer.encode(prompt, add_special_tokens=False))
        answer_len = len(tokenizer.encode(answer, add_special_tokens=False))
        output = p.output_len or answer_len
        if prompt_len < 4 or output < 4:
            continue
        if prompt_len > 1024 or prompt_len + output > 2048:
            continue
        turn: Turn = _turn(api, [("user", prompt)], prompt_len, output)
        sessions.append(Session(f"s{len(sessions)}", (turn,)))
    if not sessions:
        raise WorkloadError(f"{p.path}: no conversation passed vLLM's ShareGPT length filters")
    return sessions
