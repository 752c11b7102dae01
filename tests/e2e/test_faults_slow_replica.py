"""A slow replica: one ``kvgate sim`` a hundred times slower than its neighbour (``--speed``),
both healthy by every probe. Two mechanisms keep clients off it:

- the **queue scorers** (``llm-d-default``: queue, KV-cache utilization, prefix): under
  concurrent load the slow replica's waiting queue and KV use grow in its /metrics, so most
  requests go to the fast one, and every request still succeeds;
- **outlier detection**: with a ``--request-timeout`` below the slow replica's latency, an
  attempt there ends in an OpenAI-shaped 504 and ejects it
  (``--outlier-consecutive-failures 1``), after which every request goes to the fast one.
"""

from __future__ import annotations

import concurrent.futures
import random
from collections import Counter
from collections.abc import Callable

import pytest

from e2e.test_faults import (
    MODEL,
    completion,
    in_rotation,
    is_openai_error,
    metric_samples,
    post,
    start_serve,
)
from support.procs import Proc, wait_until
from support.sim import SimHandle, start_sim

pytestmark = pytest.mark.slow

WORDS = [f"w{i}" for i in range(300)]


def prompt(rng: random.Random) -> str:
    """A fresh prompt, so prefix affinity never decides the pick."""
    return " ".join(rng.choice(WORDS) for _ in range(24))


def replicas(spawn: Callable[..., Proc]) -> tuple[SimHandle, SimHandle]:
    common = {"model": MODEL, "max_num_seqs": 2, "wait": False}
    fast = start_sim(spawn, name="fast", speed=20, seed=1, **common)
    slow = start_sim(spawn, name="slow", speed=0.2, seed=2, **common)
    for sim in (fast, slow):
        sim.proc.wait_http(sim.url + "/health", timeout_s=30)
    return fast, slow


def endpoints(fast: SimHandle, slow: SimHandle) -> list[str]:
    return ["--endpoint", fast.url, "--endpoint", slow.url, "--policy", "llm-d-default"]


def served_port(headers: dict[str, str]) -> int:
    return int(headers["x-kvgate-endpoint"].rsplit(":", 1)[1])


def test_queue_scorers_steer_load_around_a_slow_replica(spawn: Callable[..., Proc]) -> None:
    fast, slow = replicas(spawn)
    url, _ = start_serve(spawn, *endpoints(fast, slow))
    wait_until(lambda: len(in_rotation(url)) == 2, timeout_s=10, what="both in rotation")
    rng = random.Random(7)
    bodies = [completion(prompt=prompt(rng), max_tokens=16, ignore_eos=True) for _ in range(48)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda body: post(url, body, timeout_s=30), bodies))
    assert [status for status, _, _ in results] == [200] * len(bodies)
    by_port = Counter(served_port(headers) for _, headers, _ in results)
    # idle at first, the slow replica gets its share of the first picks; then its queue shows
    # (measured 40-41 of 48 on the fast one; an even split would be 24)
    assert by_port[fast.port] >= 0.7 * len(bodies), by_port


def test_outlier_detection_ejects_a_replica_slower_than_the_timeout(
    spawn: Callable[..., Proc],
) -> None:
    fast, slow = replicas(spawn)
    url, _ = start_serve(
        spawn, *endpoints(fast, slow), "--request-timeout", "300ms",
        "--outlier-consecutive-failures", "1", "--outlier-max-ejection-percent", "50",
    )  # fmt: skip
    wait_until(lambda: len(in_rotation(url)) == 2, timeout_s=10, what="both in rotation")
    rng = random.Random(8)
    statuses: list[tuple[int, int | None]] = []
    for _ in range(40):
        status, headers, body = post(
            url, completion(prompt=prompt(rng), max_tokens=16, ignore_eos=True), timeout_s=10
        )
        if status == 200:
            statuses.append((status, served_port(headers)))
        else:
            assert status == 504 and is_openai_error(body), (status, body)
            statuses.append((status, None))
        ejections = metric_samples(url, "kvgate_outlier_ejections_total")
        if any(f":{slow.port}" in key for key in ejections) and len(statuses) >= 10:
            break
    timeouts = [s for s, _ in statuses if s == 504]
    assert len(timeouts) == 1, statuses  # one attempt there, then it is out of rotation
    after = statuses[statuses.index((504, None)) + 1 :]
    assert after and all(s == (200, fast.port) for s in after), statuses
    states = metric_samples(url, "kvgate_outlier_breaker_state")
    assert states == {
        f'{{endpoint="127.0.0.1:{fast.port}"}}': 0,
        f'{{endpoint="127.0.0.1:{slow.port}"}}': 1,
    }
