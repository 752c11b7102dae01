"""Conformance: the same requests to real vLLM 0.32 and to ``kvgate sim`` configured like it.

Each test sends identical requests to both and requires the same response JSON shapes,
metric names/types/labels/semantics, KV-event wire format and block hashes. Token ids and
hashes must match exactly; generated text is never compared (greedy output is not stable
across builds). A failure lists every difference, one line each, naming the JSON path.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conformance.shapes import differences, shape
from kvgate.kvcache.hashing import block_hashes, to_event_hash
from kvgate.kvcache.tokenize import Tokenizer
from support.vllm import (
    BLOCK_SIZE,
    MODEL_NAME,
    get_text,
    iter_events,
    post_json,
    stream_sse,
    unique_words,
)

from .conftest import Twins

pytestmark = pytest.mark.vllm


def _both(twins: Twins, path: str, body: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    return {name: post_json(r.base_url + path, body) for name, r in twins.both}


def _same_shape(results: dict[str, Any], what: str) -> None:
    diffs = differences(shape(results["vllm"]), shape(results["sim"]))
    assert not diffs, f"{what}: the sim's JSON differs from vLLM's:\n" + "\n".join(diffs)


def _chat(tag: str, words: int = 40, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": unique_words(tag, words)}],
        "max_tokens": 4,
        "ignore_eos": True,
        "temperature": 0,
        **extra,
    }


# --- responses ----------------------------------------------------------------------------------


def test_chat_completion_json_shape(twins: Twins) -> None:
    out = _both(twins, "/v1/chat/completions", _chat("conf-chat"))
    assert out["vllm"][0] == out["sim"][0] == 200
    _same_shape({k: v[1] for k, v in out.items()}, "chat completion")
    for _, body in out.values():
        assert body["object"] == "chat.completion" and body["model"] == MODEL_NAME
        assert body["usage"]["completion_tokens"] == 4
        assert body["choices"][0]["finish_reason"] == "length"
    assert out["vllm"][1]["usage"]["prompt_tokens"] == out["sim"][1]["usage"]["prompt_tokens"]


def test_completion_json_shape(twins: Twins) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": unique_words("conf-completion", 50),
        "max_tokens": 3,
        "ignore_eos": True,
    }
    out = _both(twins, "/v1/completions", body)
    assert out["vllm"][0] == out["sim"][0] == 200
    _same_shape({k: v[1] for k, v in out.items()}, "completion")
    assert (
        out["vllm"][1]["usage"] == out["sim"][1]["usage"] | {"completion_tokens": 3}
        or out["vllm"][1]["usage"]["prompt_tokens"] == out["sim"][1]["usage"]["prompt_tokens"]
    )


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streaming_chunk_shapes(twins: Twins, kind: str) -> None:
    if kind == "chat":
        path, body = "/v1/chat/completions", _chat("conf-stream", max_tokens=3)
    else:
        path = "/v1/completions"
        body = {"model": MODEL_NAME, "prompt": unique_words("conf-stream-c", 30), "max_tokens": 3}
        body["ignore_eos"] = True
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    chunks = {name: stream_sse(r.base_url + path, body) for name, r in twins.both}
    for name, seq in chunks.items():
        assert seq[-1] == "[DONE]", f"{name}: stream does not end with [DONE]"
        assert seq[-2]["choices"] == [] and seq[-2]["usage"]["completion_tokens"] == 3, name
    real, sim = chunks["vllm"], chunks["sim"]
    assert len(real) == len(sim), f"{kind}: vLLM sent {len(real)} events, the sim {len(sim)}"
    problems: list[str] = []
    for i, (a, b) in enumerate(zip(real[:-1], sim[:-1], strict=True)):
        problems += [f"chunk {i}: {d}" for d in differences(shape(a), shape(b))]
    assert not problems, f"{kind} stream chunks differ:\n" + "\n".join(problems)


def test_usage_reports_the_same_cached_tokens(twins: Twins) -> None:
    body = _chat("conf-cached", words=70, max_tokens=1)
    first = _both(twins, "/v1/chat/completions", body)
    second = _both(twins, "/v1/chat/completions", body)
    usage = {name: (first[name][1]["usage"], second[name][1]["usage"]) for name in first}
    for name, (cold, warm) in usage.items():
        n = warm["prompt_tokens"]
        assert cold["prompt_tokens_details"]["cached_tokens"] == 0, name
        # Whole blocks only, and never the block holding the last prompt token.
        assert warm["prompt_tokens_details"]["cached_tokens"] == (n - 1) // BLOCK_SIZE * BLOCK_SIZE
    problems = []
    for i, when in enumerate(("cold", "repeat")):
        for key in ("prompt_tokens", "completion_tokens"):
            real, sim = usage["vllm"][i][key], usage["sim"][i][key]
            if real != sim:
                problems.append(f"{when} usage.{key}: vLLM {real}, sim {sim}")
        for key in ("cached_tokens", "created_cache_tokens"):
            real = usage["vllm"][i]["prompt_tokens_details"].get(key)
            sim = usage["sim"][i]["prompt_tokens_details"].get(key)
            if real != sim:
                problems.append(f"{when} usage.prompt_tokens_details.{key}: vLLM {real}, sim {sim}")
    assert not problems, "usage differs:\n" + "\n".join(problems)


def test_error_json_shapes(twins: Twins) -> None:
    cases = {
        "unknown model": ("/v1/chat/completions", _chat("conf-err") | {"model": "no-such-model"}),
        "negative max_tokens": ("/v1/chat/completions", _chat("conf-err") | {"max_tokens": -1}),
        "prompt longer than max-model-len": (
            "/v1/completions",
            {"model": MODEL_NAME, "prompt": "word " * 2100, "max_tokens": 1},
        ),
    }
    problems: list[str] = []
    for what, (path, body) in cases.items():
        out = _both(twins, path, body)
        if out["vllm"][0] != out["sim"][0]:
            problems.append(f"{what}: vLLM status {out['vllm'][0]}, sim {out['sim'][0]}")
        problems += [
            f"{what}: {d}" for d in differences(shape(out["vllm"][1]), shape(out["sim"][1]))
        ]
    assert not problems, "error responses differ:\n" + "\n".join(problems)


def test_models_list_shape(twins: Twins) -> None:
    import json

    out = {name: json.loads(get_text(r.base_url + "/v1/models")) for name, r in twins.both}
    _same_shape(out, "/v1/models")
    assert [m["id"] for m in out["sim"]["data"]] == [m["id"] for m in out["vllm"]["data"]]


# --- token ids and block hashes -----------------------------------------------------------------


def test_prompt_token_ids_match_kvgates_tokenizer(twins: Twins) -> None:
    tokenizer = Tokenizer.from_path(twins.model_path)
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France? " + unique_words("ids", 20)},
    ]
    status, real = post_json(
        twins.vllm.base_url + "/v1/chat/completions",
        {"model": MODEL_NAME, "messages": messages, "max_tokens": 1, "return_token_ids": True},
    )
    assert status == 200
    assert tokenizer.encode_chat(messages) == real["prompt_token_ids"]
    prompt = "Once upon a time " + unique_words("ids-c", 15)
    for name, r in twins.both:
        status, tok = post_json(r.base_url + "/tokenize", {"model": MODEL_NAME, "prompt": prompt})
        assert status == 200, (name, tok)
        assert tok["tokens"] == tokenizer.encode(prompt), name
        status, tok = post_json(
            r.base_url + "/tokenize", {"model": MODEL_NAME, "messages": messages}
        )
        assert status == 200, (name, tok)
        assert tok["tokens"] == real["prompt_token_ids"], name


def _stored_events(twins: Twins, which: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    recorder = twins.events(which)
    replica = twins.vllm if which == "vllm" else twins.sim
    mark = recorder.mark()
    status, _ = post_json(replica.base_url + "/v1/completions", body)
    assert status == 200
    msgs = recorder.wait(
        lambda ms: any(e["type"] == "BlockStored" for e in iter_events(ms)), mark=mark, replica=0
    )
    return [e for e in iter_events(msgs) if e["type"] == "BlockStored"]


def test_kv_event_wire_format_and_block_hashes(twins: Twins) -> None:
    tokenizer = Tokenizer.from_path(twins.model_path)
    prompt = unique_words("conf-events", 70)
    token_ids = tokenizer.encode(prompt)
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 1}
    stored = {which: _stored_events(twins, which, body) for which in ("vllm", "sim")}
    expected = [
        to_event_hash(h) for h in block_hashes(token_ids, BLOCK_SIZE, algo="sha256", seed=None)
    ]
    problems: list[str] = []
    for which, events in stored.items():
        hashes = [h for e in events for h in e["block_hashes"]]
        if hashes[: len(expected)] != expected:
            problems.append(f"{which}: block hashes {hashes} != kvgate.kvcache.hashing {expected}")
        first = events[0]
        if first["parent_block_hash"] is not None:
            problems.append(f"{which}: first block has a parent {first['parent_block_hash']}")
        if first["token_ids"][:BLOCK_SIZE] != token_ids[:BLOCK_SIZE]:
            problems.append(f"{which}: token_ids of the first block differ from the prompt's")
        if not all(0 <= h < 2**64 for h in hashes):
            problems.append(f"{which}: hashes are not unsigned 64-bit ints")
    real, sim = stored["vllm"][0], stored["sim"][0]
    if list(real) != list(sim):
        problems.append(f"BlockStored keys/order: vLLM {list(real)}, sim {list(sim)}")
    for key in ("block_size", "medium", "lora_id", "lora_name", "extra_keys", "group_idx"):
        if real.get(key) != sim.get(key):
            problems.append(f"BlockStored.{key}: vLLM {real.get(key)!r}, sim {sim.get(key)!r}")
    problems += differences(shape(real), shape(sim))
    assert not problems, "KV events differ:\n" + "\n".join(problems)


def test_kv_event_frames_and_seq(twins: Twins) -> None:
    problems: list[str] = []
    batches: dict[str, Any] = {}
    for which, replica in twins.both:
        recorder = twins.events(which)
        mark = recorder.mark()
        body = {"model": MODEL_NAME, "prompt": unique_words(f"conf-frames-{which}", 40)}
        post_json(replica.base_url + "/v1/completions", body | {"max_tokens": 1})
        post_json(replica.base_url + "/v1/completions", body | {"prompt": body["prompt"] + " x"})
        msgs = recorder.wait(lambda ms: len(ms) >= 1, mark=mark, replica=0)
        for m in msgs:
            if len(m.frames) != 3 or len(m.frames[1]) != 8:
                problems.append(
                    f"{which}: frames {[len(f) for f in m.frames]}, want [topic, 8, payload]"
                )
            if m.topic != replica.kv_events_topic:
                problems.append(f"{which}: topic {m.topic!r} != {replica.kv_events_topic!r}")
        all_msgs = recorder.since(0, replica=0)
        seqs = [m.seq for m in all_msgs]
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            problems.append(f"{which}: seq not consecutive: {seqs[:10]}...")
        batch = msgs[0].decoded()
        batches[which] = batch
        if not (isinstance(batch, list) and len(batch) == 3 and isinstance(batch[0], float)):
            problems.append(f"{which}: batch is not [ts: float, events, dp_rank]: {batch!r:.100}")
        elif batch[2] != 0:
            problems.append(f"{which}: data_parallel_rank {batch[2]!r}, want 0")
    assert not problems, "KV-event frames differ:\n" + "\n".join(problems)


# --- metrics ------------------------------------------------------------------------------------


def _families(url: str) -> dict[str, Any]:
    text = get_text(url + "/metrics")
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("vllm:")}


def _value(families: dict[str, Any], name: str, sample: str | None = None) -> float:
    fam = families[name]
    return sum(s.value for s in fam.samples if s.name == (sample or fam.name + "_total"))


def test_metric_names_types_and_labels(twins: Twins) -> None:
    post_json(
        twins.sim.base_url + "/v1/completions",
        {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 1},
    )
    real, sim = _families(twins.vllm.base_url), _families(twins.sim.base_url)
    problems: list[str] = []
    for name, fam in sorted(real.items()):
        if name.endswith("_created"):
            continue  # prometheus_client's companion of each counter, follows the counter
        if name not in sim:
            problems.append(f"{name} ({fam.type}): missing in sim")
            continue
        if sim[name].type != fam.type:
            problems.append(f"{name}: type {fam.type} in vLLM, {sim[name].type} in sim")
        real_labels = {k for s in fam.samples for k in s.labels if k != "le"}
        sim_labels = {k for s in sim[name].samples for k in s.labels if k != "le"}
        if real_labels != sim_labels:
            problems.append(
                f"{name}: labels {sorted(real_labels)} in vLLM, {sorted(sim_labels)} in sim"
            )
    assert not problems, "metrics differ:\n" + "\n".join(problems)


def test_cache_config_info_matches(twins: Twins) -> None:
    real, sim = _families(twins.vllm.base_url), _families(twins.sim.base_url)
    real_labels = real["vllm:cache_config_info"].samples[0].labels
    sim_labels = sim["vllm:cache_config_info"].samples[0].labels
    problems = []
    for key in (
        "block_size",
        "num_gpu_blocks",
        "prefix_caching_hash_algo",
        "enable_prefix_caching",
    ):
        if real_labels.get(key) != sim_labels.get(key):
            problems.append(f"{key}: vLLM {real_labels.get(key)!r}, sim {sim_labels.get(key)!r}")
    missing = sorted(set(real_labels) - set(sim_labels))
    if missing:
        problems.append(f"labels missing in sim: {missing}")
    assert not problems, "cache_config_info differs:\n" + "\n".join(problems)


def test_prefix_cache_counters_count_tokens_and_idle_usage_is_zero(twins: Twins) -> None:
    body = {"model": MODEL_NAME, "prompt": unique_words("conf-counters", 70), "max_tokens": 1}
    deltas: dict[str, tuple[float, float, int, int]] = {}
    for name, r in twins.both:
        post_json(r.base_url + "/v1/completions", body)  # warm the cache
        before = _families(r.base_url)
        status, out = post_json(r.base_url + "/v1/completions", body)
        assert status == 200
        after = _families(r.base_url)
        queries = _value(after, "vllm:prefix_cache_queries") - _value(
            before, "vllm:prefix_cache_queries"
        )
        hits = _value(after, "vllm:prefix_cache_hits") - _value(before, "vllm:prefix_cache_hits")
        deltas[name] = (
            queries,
            hits,
            out["usage"]["prompt_tokens"],
            out["usage"]["prompt_tokens_details"]["cached_tokens"],
        )
        usage = _value(after, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc")
        assert usage == 0.0, f"{name}: kv_cache_usage_perc {usage} while idle (vLLM reports 0)"
    for name, (queries, hits, prompt_tokens, cached) in deltas.items():
        assert (queries, hits) == (prompt_tokens, cached), f"{name}: counters are not in tokens"
    assert deltas["vllm"] == deltas["sim"]
