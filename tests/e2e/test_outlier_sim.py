"""Outlier ejection end to end: a real ``kvgate serve`` in front of two real ``kvgate sim``
replicas, one of which answers every completion with 500 at once while its /health, /metrics
and model list stay healthy (the case the scorers cannot see: it looks idle)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable

from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

MODEL = "sim-model"
CONSECUTIVE_FAILURES = 3
HALF_OPEN_PROBES = 1
REQUESTS = 200


def post(url: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def samples(base: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of every sample of ``name`` on the gateway's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def value_for(found: dict[str, float], endpoint: str, **labels: str) -> float:
    """The sample whose labels include ``endpoint="<endpoint>"`` and ``labels``; 0 if none."""
    want = [f'endpoint="{endpoint}"', *(f'{k}="{v}"' for k, v in labels.items())]
    return sum(v for text, v in found.items() if all(w in text for w in want))


def test_failing_replica_is_ejected(spawn: Callable[..., Proc]) -> None:
    good = start_sim(spawn, model=MODEL, speed=50, seed=1, name="good", wait=False)
    bad = start_sim(
        spawn,
        model=MODEL,
        speed=50,
        seed=2,
        name="bad",
        wait=False,
        failure_rate=1.0,
        failure_kinds="500",
    )
    for sim in (good, bad):
        sim.proc.wait_http(sim.url + "/health", timeout_s=30)
    port = free_port()
    gw = spawn(
        kvgate_cmd(
            "serve",
            "--port",
            str(port),
            "--seed",
            "7",
            "--endpoint",
            good.url,
            "--endpoint",
            bad.url,
            "--outlier-consecutive-failures",
            str(CONSECUTIVE_FAILURES),
            "--outlier-half-open-probes",
            str(HALF_OPEN_PROBES),
            # long enough that the breaker stays open for the whole run
            "--outlier-base-ejection-time",
            "5m",
            "--outlier-max-ejection-time",
            "5m",
        ),
        name="gw",
    )
    base = f"http://127.0.0.1:{port}"
    gw.wait_http(base + "/health", timeout_s=30)
    wait_until(
        lambda: get_json(base + "/ready").get("endpoints_in_rotation") == 2,
        timeout_s=15,
        what="both replicas in rotation",
    )

    statuses = [
        post(base + "/v1/completions", {"model": MODEL, "prompt": f"req {i}", "max_tokens": 2})
        for i in range(REQUESTS)
    ]

    assert statuses.count(200) == REQUESTS, sorted(set(statuses))
    bad_name, good_name = f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"
    picks = samples(base, "kvgate_endpoint_picks_total")
    first_attempts_bad = value_for(picks, bad_name)
    assert first_attempts_bad <= CONSECUTIVE_FAILURES + HALF_OPEN_PROBES, picks
    assert value_for(picks, good_name) >= REQUESTS - first_attempts_bad
    states = samples(base, "kvgate_outlier_breaker_state")
    assert value_for(states, bad_name) == 1  # open
    assert value_for(states, good_name) == 0
    ejections = samples(base, "kvgate_outlier_ejections_total")
    assert value_for(ejections, bad_name, reason="consecutive_failures") == 1
