"""Workload shapes and lengths, counted with the simulator's tokenizer."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from kvgate.bench.workloads import TextGen, WorkloadError, build_workload, parse_params
from kvgate.kvcache.tokenize import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def _turns(w):  # type: ignore[no-untyped-def]
    return [t for s in w.sessions for t in s.turns]


def test_shared_prefix_lengths_are_exact(tok: Tokenizer) -> None:
    w = build_workload(
        "shared-prefix",
        {
            "num_groups": 3,
            "prompts_per_group": 4,
            "system_prompt_len": 300,
            "question_len": 40,
            "output_len": 7,
        },
        seed=1,
    )
    assert w.num_requests == 12
    for t in _turns(w):
        assert t.prompt is not None
        assert len(tok.encode(t.prompt)) == t.prompt_tokens == 340
        assert t.max_tokens == 7
    # every prompt of a group shares the group's system prompt; groups differ
    prefixes: dict[str, set[tuple[int, ...]]] = {}
    for t in _turns(w):
        assert t.prompt is not None
        ids = tok.encode(t.prompt)
        prefixes.setdefault(t.group, set()).add(tuple(ids[:300]))
    assert len(prefixes) == 3
    assert all(len(p) == 1 for p in prefixes.values())
    assert len({next(iter(p)) for p in prefixes.values()}) == 3


def test_shared_prefix_is_deterministic_by_seed() -> None:
    params = {"num_groups": 2, "prompts_per_group": 2}
    a = build_workload("shared-prefix", params, seed=5)
    b = build_workload("shared-prefix", params, seed=5)
    c = build_workload("shared-prefix", params, seed=6)
    assert a.sessions == b.sessions
    assert a.sessions != c.sessions


def test_shared_prefix_multi_turn_resends_history(tok: Tokenizer) -> None:
    w = build_workload(
        "shared-prefix",
        {
            "num_groups": 1,
            "prompts_per_group": 2,
            "system_prompt_len": 50,
            "question_len": 10,
            "output_len": 5,
            "turns": 3,
        },
    )
    for s in w.sessions:
        assert [t.prompt_tokens for t in s.turns] == [60, 75, 90]
        prev = ""
        for t in s.turns:
            assert t.prompt is not None and t.prompt.startswith(prev)
            assert len(tok.encode(t.prompt)) == t.prompt_tokens
            prev = t.prompt


def test_chat_api_counts_the_template(tok: Tokenizer) -> None:
    w = build_workload("multi-turn", {"num_sessions": 2, "turns": 2}, api="chat")
    for t in _turns(w):
        assert t.messages is not None and t.prompt is None
        assert len(tok.encode_chat(t.messages)) == t.prompt_tokens
    s = w.sessions[0]
    assert s.turns[1].think_time_s == 1.0 and s.turns[0].think_time_s == 0.0
    assert list(s.turns[1].messages or ())[: len(s.turns[0].messages or ())] == list(
        s.turns[0].messages or ()
    )


def test_multi_turn_lengths_grow_by_question_and_answer(tok: Tokenizer) -> None:
    w = build_workload(
        "multi-turn",
        {
            "num_sessions": 3,
            "turns": 4,
            "system_prompt_len": 20,
            "question_len": 8,
            "output_len": 6,
        },
    )
    assert w.num_requests == 12
    for s in w.sessions:
        assert [t.prompt_tokens for t in s.turns] == [28, 42, 56, 70]
        for t in s.turns:
            assert t.prompt is not None and len(tok.encode(t.prompt)) == t.prompt_tokens


def test_long_doc_qa_shares_few_documents(tok: Tokenizer) -> None:
    w = build_workload(
        "long-doc-qa",
        {"num_docs": 2, "doc_len": 1000, "num_questions": 20, "question_len": 16},
        seed=3,
    )
    turns = _turns(w)
    assert len(turns) == 20
    assert {t.group for t in turns} == {"d0", "d1"}
    for t in turns[:5]:
        assert t.prompt is not None and len(tok.encode(t.prompt)) == 1016


def test_random_lengths_follow_a_lognormal(tok: Tokenizer) -> None:
    w = build_workload(
        "random",
        {"num_requests": 2000, "input_median": 200, "input_sigma": 0.8, "max_input_len": 100000},
        seed=2,
    )
    ins = [t.prompt_tokens for t in _turns(w)]
    outs = [t.max_tokens for t in _turns(w)]
    assert 180 <= statistics.median(ins) <= 220
    assert 105 <= statistics.median(outs) <= 135
    # log-normal: mean = median * exp(sigma^2 / 2)
    assert statistics.mean(ins) == pytest.approx(200 * 2.718281828 ** (0.32), rel=0.08)
    for t in _turns(w)[:20]:
        assert t.prompt is not None and len(tok.encode(t.prompt)) == t.prompt_tokens


def test_trace_replay_shares_blocks_by_hash_id(tmp_path: Path, tok: Tokenizer) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 500, "input_length": 700, "output_length": 9, "hash_ids": [1, 4]},
        {"timestamp": 1500, "input_length": 100, "output_length": 3},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = build_workload("trace", {"path": str(path), "time_scale": "2"})
    assert [s.arrival_s for s in w.sessions] == [0.0, 1.0, 3.0]
    turns = _turns(w)
    assert [t.max_tokens for t in turns] == [5, 9, 3]
    ids = [tok.encode(t.prompt or "") for t in turns]
    assert [len(i) for i in ids] == [1100, 700, 100]
    assert ids[0][:512] == ids[1][:512]  # hash id 1
    assert ids[0][512:1024] != ids[1][512:1024]


def test_bad_parameters_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="unknown parameter 'groups'"):
        build_workload("shared-prefix", {"groups": 3})
    with pytest.raises(WorkloadError, match="num_groups: expected int"):
        build_workload("shared-prefix", {"num_groups": "many"})
    with pytest.raises(WorkloadError, match="unknown workload"):
        build_workload("no-such-workload")
    with pytest.raises(WorkloadError, match="sharegpt: set the file"):
        build_workload("sharegpt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 1}\n')
    with pytest.raises(WorkloadError, match=r"bad.jsonl:1"):
        build_workload("trace", {"path": str(bad)})
    assert parse_params(["num-groups=3", "x= y"]) == {"num_groups": "3", "x": "y"}
    with pytest.raises(WorkloadError):
        parse_params(["novalue"])


def test_shared_prefix_warmup_comes_first_one_per_group() -> None:
    w = build_workload(
        "shared-prefix",
        {"num_groups": 3, "prompts_per_group": 2, "warmup_per_group": 1, "system_prompt_len": 20},
    )
    assert w.num_requests == 6  # measured only
    assert [s.warmup for s in w.sessions] == [True] * 3 + [False] * 6
    assert [s.turns[0].group for s in w.sessions[:3]] == ["g0", "g1", "g2"]
    warm_prompts = {s.turns[0].group: s.turns[0].prompt or "" for s in w.sessions[:3]}
    for s in w.sessions[3:]:
        t = s.turns[0]
        assert (t.prompt or "")[:40] == warm_prompts[t.group][:40]  # same system prompt


def test_text_has_the_density_of_english(tok: Tokenizer) -> None:
    # ~4.4 characters per token, as English under BPE tokenizers and as the approximate
    # prefix scorer's character blocks assume; a uniform draw of the vocabulary gives ~8.
    text = TextGen(seed=5).text(4000)
    assert len(tok.encode(text, add_special_tokens=False)) == 4000
    assert 4.0 <= len(text) / 4000 <= 4.8
    assert len(set(text.split())) > 1500  # still a large vocabulary: no accidental sharing
