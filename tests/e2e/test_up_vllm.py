"""``kvgate up`` with real vLLM replicas (the default engine and the built-in SmolLM2 demo):
it comes up, answers, shows a cache hit on a repeated prompt (lower TTFT and
``cached_tokens > 0``) and stops cleanly. It launches its own two replicas."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from support.procs import Proc, free_port, http_ok, kvgate_cmd, wait_until
from support.vllm import engine_skip_reason, unique_words

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(540)]  # vLLM start-up on a busy CPU


def _ttft_and_cached(client: openai.OpenAI, model: str, prompt: str) -> tuple[float, int]:
    started = time.perf_counter()
    ttft = None
    cached = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
        if chunk.usage is not None and chunk.usage.prompt_tokens_details is not None:
            cached = chunk.usage.prompt_tokens_details.cached_tokens or 0
    assert ttft is not None
    return ttft, cached


def test_up_real_vllm_cache_hit(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    reason = engine_skip_reason()
    if reason:
        pytest.skip(reason)
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "up",
            "--port",
            str(port),
            "--run-dir",
            str(tmp_path),
            "--no-request-log",
            "--ready-timeout",
            "270",
        ),
        name="up-vllm",
    )
    wait_until(
        lambda: "OpenAI base URL" in proc.log() or not proc.alive(),
        timeout_s=300,
        what="kvgate up with vLLM ready",
    )
    assert proc.alive(), proc.log()[-4000:]
    log = proc.log()
    replicas = re.findall(r"starting replica-\d+ on (http://\S+)", log)
    assert len(replicas) == 2
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    prompt = unique_words("up-vllm", 400)  # ~12 blocks of 32 tokens
    ttft_cold, cached_cold = _ttft_and_cached(client, model, prompt)
    ttft_warm, cached_warm = _ttft_and_cached(client, model, prompt)
    assert cached_cold == 0
    assert cached_warm > 0, "the repeat should land where the prefix is cached"
    assert ttft_warm < ttft_cold, (ttft_cold, ttft_warm)
    assert proc.stop(timeout_s=60) == 0
    text = proc.log_path.read_text()
    assert "kvgate up: stopped" in text
    for url in replicas:
        assert not http_ok(url + "/health", timeout_s=0.5)
