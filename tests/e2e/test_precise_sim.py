"""Precise routing end to end: ``kvgate serve`` with the precise scorer in front of ``kvgate
sim`` replicas that publish KV events; for every request of a multi-turn workload, the
scorer's predicted cached tokens on the chosen replica equal what that replica reports,
including after evictions (small KV caches) and with a CPU offload tier."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import SimHandle, start_sim

MODEL = "sim-model"
HEADER = "x-kvgate-predicted-cached-tokens"


def precise_config(zmq_port: int, scorer_weight: int = 3, block_size: int = 16) -> str:
    """The precise policy, with the collector on a test port."""
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    tokenProcessorConfig:
      blockSize: {block_size}
    kvEventsConfig:
      zmqEndpoint: tcp://127.0.0.1:{zmq_port}
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: {scorer_weight}
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: max-score-picker
"""


def post(url: str, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: {exc.code} {exc.read()[:500]!r}") from None


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def start_cluster(
    spawn: Callable[..., Proc], replicas: int, **sim_flags: Any
) -> tuple[str, list[SimHandle]]:
    zmq_port = free_port()
    gw_port = free_port()
    sims = [
        start_sim(
            spawn,
            model=MODEL,
            name=f"sim{i}",
            speed=200,
            block_size=16,
            seed=i,
            mode="random",
            kv_events_endpoint=f"tcp://127.0.0.1:{zmq_port}",
            wait=False,
            **sim_flags,
        )
        for i in range(replicas)
    ]
    args = ["serve", "--port", str(gw_port), "--config-text", precise_config(zmq_port)]
    for sim in sims:
        args += ["--endpoint", sim.url]
    gateway = spawn(kvgate_cmd(*args, "--log-format", "json", "--seed", "3"), name="gw")
    for sim in sims:
        sim.proc.wait_http(sim.url + "/health", timeout_s=60)
    url = f"http://127.0.0.1:{gw_port}"
    gateway.wait_http(url + "/ready", timeout_s=60)
    for sim in sims:  # the gateway's SUB has subscribed: no batch is lost to the slow joiner
        wait_until(
            lambda sim=sim: json.loads(get(sim.url + "/sim/stats"))["kv_event_subscriptions"] > 0,
            timeout_s=30,
            what=f"{sim.url}'s KV-event publisher to have a subscriber",
        )
    return url, sims


def wait_for_events(url: str, sims: list[SimHandle], timeout_s: float = 10.0) -> None:
    """Until the gateway's index has applied every batch each replica has published."""

    def caught_up() -> bool:
        applied: dict[str, int] = {}
        for line in get(url + "/metrics").decode().splitlines():
            if line.startswith("kvgate_kv_events_last_seq{"):
                endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
                applied[endpoint] = int(float(line.rsplit(" ", 1)[1])) + 1
        for sim in sims:
            published = json.loads(get(sim.url + "/sim/stats"))["kv_event_batches"]
            if applied.get(f"{sim.host}:{sim.port}", 0) < published:
                return False
        return True

    wait_until(caught_up, timeout_s=timeout_s, what="the gateway to apply every KV event")


def run_conversations(
    url: str,
    sims: list[SimHandle],
    *,
    conversations: int,
    turns: int,
    seed: int,
    prefix_words: int,
    groups: int = 1,
) -> list[tuple[str, int, int, int]]:
    """Sequential multi-turn chats, interleaved across conversations.

    Returns (served_by, predicted, cached_tokens, prompt_tokens) per request.
    """
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    # Conversation c shares its system prompt's first ``prefix_words`` words with the others
    # of its group (c % groups).
    shared = [" ".join(rng.choice(words) for _ in range(prefix_words)) for _ in range(groups)]
    histories: list[list[dict[str, str]]] = [
        [{"role": "system", "content": f"{shared[c % groups]} (conversation {c})"}]
        for c in range(conversations)
    ]
    out = []
    for _turn in range(turns):
        for history in histories:
            question = " ".join(rng.choice(words) for _ in range(rng.randint(10, 30)))
            history.append({"role": "user", "content": question})
            # Barrier: the gateway has applied every KV-event batch the replicas published
            # (their /sim/stats count against its kvgate_kv_events_last_seq per endpoint).
            wait_for_events(url, sims)
            headers, body = post(
                url + "/v1/chat/completions",
                {"model": MODEL, "messages": history, "max_tokens": 24, "temperature": 0},
            )
            usage = body["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            out.append(
                (
                    headers["x-kvgate-endpoint"],
                    int(headers[HEADER]),
                    int(cached),
                    int(usage["prompt_tokens"]),
                )
            )
            history.append(
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]}
            )
    return out


def _check(results: list[tuple[str, int, int, int]]) -> None:
    mismatches = [(i, r) for i, r in enumerate(results) if r[1] != r[2]]
    assert not mismatches, (
        f"predicted != cached_tokens for {len(mismatches)} requests: {mismatches[:5]}"
    )
    assert sum(r[2] for r in results) > 0, "the workload never hit the prefix cache"


def _sim_counter(sim: SimHandle, name: str, label: str = "") -> float:
    total = 0.0
    for line in get(sim.url + "/metrics").decode().splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


def test_predictions_match_cached_tokens_with_evictions(spawn: Callable[..., Proc]) -> None:
    # 3 replicas with 64 blocks (1024 tokens) each: 8 growing conversations do not fit,
    # so the replicas evict while the workload runs. Four system prompts, so that prefix
    # affinity spreads the conversations (one shared prompt sends every sequential request
    # to the replica holding it: the load scorers see idle replicas).
    url, sims = start_cluster(spawn, 3, num_gpu_blocks=64)
    results = run_conversations(
        url, sims, conversations=8, turns=4, seed=1, prefix_words=60, groups=4
    )
    _check(results)
    # Evictions happened: some replica computed more new KV than its cache holds.
    computed: dict[str, int] = {}
    for served, _predicted, cached, prompt in results:
        computed[served] = computed.get(served, 0) + prompt - cached + 24
    assert max(computed.values()) > 64 * 16, computed
    assert len(computed) >= 2, f"everything went to {set(computed)}"


def test_predictions_match_with_a_cpu_offload_tier(spawn: Callable[..., Proc]) -> None:
    url, sims = start_cluster(spawn, 2, num_gpu_blocks=64, kv_offload_blocks=256)
    results = run_conversations(url, sims, conversations=6, turns=3, seed=2, prefix_words=60)
    _check(results)
    host_hits = sum(
        _sim_counter(sim, "vllm:prompt_tokens_cached_by_source", 'source="host"') for sim in sims
    )
    assert host_hits > 0, "no prefix hit came from the CPU tier"


def test_legacy_array_events(spawn: Callable[..., Proc]) -> None:
    url, sims = start_cluster(spawn, 2, kv_events_format="array")
    results = run_conversations(url, sims, conversations=3, turns=3, seed=3, prefix_words=60)
    _check(results)
