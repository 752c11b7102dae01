"""Real vLLM replicas started by kvgate's launcher: pinned, serving, publishing KV events."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.engines.hosts import cpu_list
from support.vllm import MODEL_NAME, VllmPair, get_text, post_json, unique_words

pytestmark = pytest.mark.vllm


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/<pid>/stat: the process group
            pids.append(int(entry.name))
    return pids


def _allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_each_replica_is_pinned_to_its_own_cores(vllm_pair: VllmPair) -> None:
    seen: list[str] = []
    for rp in vllm_pair.supervisor.replicas:
        assert rp.alive() and rp.pid is not None and rp.spec.cpus is not None
        pids = _group_pids(rp.pid)
        assert rp.pid in pids
        # The API server and vLLM's engine core process (with its OpenMP threads) alike.
        assert {_allowed_cpus(pid) for pid in pids} == {cpu_list(rp.spec.cpus)}
        seen.append(cpu_list(rp.spec.cpus))
    if len(vllm_pair.replicas) <= len(set().union(*(r.cpus or () for r in vllm_pair.replicas))):
        assert len(set(seen)) == len(seen), "two replicas share a core although cores are free"


def test_replicas_serve_the_model_and_keep_their_cache_in_the_run_dir(
    vllm_pair: VllmPair,
) -> None:
    for r in vllm_pair.replicas:
        models_text = get_text(r.base_url + "/v1/models")
        assert f'"id":"{MODEL_NAME}"' in models_text.replace(" ", "")
        cache_root = Path(r.env["VLLM_CACHE_ROOT"])
        assert cache_root.is_dir() and cache_root.is_relative_to(vllm_pair.plan.run_dir)
        assert r.log_path.is_file() and "Starting vLLM" in r.log_path.read_text(errors="replace")


def test_a_repeated_prompt_hits_the_prefix_cache(vllm_pair: VllmPair) -> None:
    r = vllm_pair.replicas[0]
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": unique_words("repeat-hit", 60)}],
        "max_tokens": 2,
        "temperature": 0,
    }
    status, cold = post_json(r.base_url + "/v1/chat/completions", body)
    assert status == 200, cold
    status, warm = post_json(r.base_url + "/v1/chat/completions", body)
    assert status == 200, warm
    prompt_tokens = warm["usage"]["prompt_tokens"]
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # Only whole 32-token blocks are cached, and the last block is always recomputed.
    cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt_tokens - 1) // 32 * 32 > 0


def test_each_replica_publishes_kv_events_on_its_topic(vllm_pair: VllmPair) -> None:
    for r in vllm_pair.replicas:
        mark = vllm_pair.events.mark()
        body = {
            "model": MODEL_NAME,
            "prompt": unique_words(f"events-{r.index}", 40),
            "max_tokens": 1,
        }
        status, _ = post_json(r.base_url + "/v1/completions", body)
        assert status == 200
        msgs = vllm_pair.events.wait(bool, mark=mark, replica=r.index)
        assert {m.topic for m in msgs} == {r.kv_events_topic}
        assert r.kv_events_topic == f"kv@127.0.0.1:{r.port}@{MODEL_NAME}"
