"""Precise routing with real vLLM replicas: ``kvgate serve`` subscribes to both replicas'
KV-event publishers (and their replay sockets, so it catches up on what they cached before
it started); for every request of a multi-turn workload, the predicted cached tokens on the
chosen replica equal the ``cached_tokens`` vLLM reports.

The shared pair has a 3,456-token KV cache that the other vLLM tests fill, so the replicas
usually evict while this runs; forcing evictions here would cost about 7,000 prompt tokens of
CPU prefill, so evictions are proven deterministically with the simulator
(test_precise_sim.py) and with real captured BlockRemoved events (tests/kvcache)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pytest

from support.procs import Proc, free_port, kvgate_cmd
from support.vllm import BLOCK_SIZE, VllmPair, unique_words

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the shared pair may start here
HEADER = "x-kvgate-predicted-cached-tokens"


def _config(pair: VllmPair) -> str:
    publishers = {}
    replays = {}
    for replica, url in zip(pair.replicas, pair.urls, strict=True):
        hostport = urlparse(url).netloc
        assert replica.kv_events_connect, "the shared pair publishes KV events"
        publishers[hostport] = replica.kv_events_connect
        if replica.kv_events_replay_endpoint:
            replays[hostport] = replica.kv_events_replay_endpoint
    params = {
        "tokenProcessorConfig": {"blockSize": BLOCK_SIZE},
        "kvEventsConfig": {"publishers": publishers, "replayEndpoints": replays},
    }
    return json.dumps(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": [
                {"type": "precise-prefix-cache-scorer", "parameters": params},
                {"type": "queue-scorer"},
                {"type": "max-score-picker"},
            ],
            "schedulingProfiles": [
                {
                    "name": "default",
                    "plugins": [
                        {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
                        {"pluginRef": "queue-scorer", "weight": 1},
                        {"pluginRef": "max-score-picker"},
                    ],
                }
            ],
        }
    )


def _post(url: str, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: {exc.code} {exc.read()[:500]!r}") from None


def _quiet(pair: VllmPair, window_s: float = 0.15, timeout_s: float = 10.0) -> None:
    """Wait until neither replica has published for ``window_s`` (events of the last step)."""
    deadline = time.monotonic() + timeout_s
    count = pair.events.mark()
    since = time.monotonic()
    while time.monotonic() - since < window_s:
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas kept publishing KV events")
        time.sleep(0.01)
        now = pair.events.mark()
        if now != count:
            count, since = now, time.monotonic()


def test_predicted_cached_tokens_match_real_vllm(
    vllm_pair: VllmPair, spawn: Callable[..., Proc]
) -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--config-text", _config(vllm_pair), "--seed", "5"]
    for url in vllm_pair.urls:
        args += ["--endpoint", url]
    gateway = spawn(kvgate_cmd(*args), name="gw-precise-vllm")
    base = f"http://127.0.0.1:{port}"
    gateway.wait_http(base + "/ready", timeout_s=60)
    # private system prompts (unique words), so nothing cached by other tests matches
    histories = [
        [{"role": "system", "content": unique_words(f"precise-e2e-{c}", 120)}] for c in range(2)
    ]
    results = []
    for turn in range(3):
        for c, history in enumerate(histories):
            history.append(
                {"role": "user", "content": unique_words(f"precise-q-{c}-{turn}", 15) + "?"}
            )
            _quiet(vllm_pair)
            urllib.request.urlopen(base + "/metrics", timeout=10).read()  # loop barrier
            headers, body = _post(
                base + "/v1/chat/completions",
                {
                    "model": vllm_pair.model,
                    "messages": history,
                    "max_tokens": 6,
                    "temperature": 0,
                },
            )
            usage = body["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            results.append(
                (
                    headers.get("x-kvgate-endpoint"),
                    int(headers[HEADER]),
                    cached,
                    usage["prompt_tokens"],
                )
            )
            history.append(
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]}
            )
    mismatches = [r for r in results if r[1] != r[2]]
    assert not mismatches, f"{len(mismatches)} of {len(results)} differ: {mismatches[:5]}"
    assert sum(r[2] for r in results) > 0
