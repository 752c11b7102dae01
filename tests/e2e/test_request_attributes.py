"""request-attribute-reporter through both front doors, with llm-d's published README config.

``kvgate epp`` behind a real Envoy: the reported value is ext_proc dynamic metadata on the
reply that ends the response, so Envoy's access log can print it with
``%DYNAMIC_METADATA(envoy.lb:...)%`` (JSON and streamed answers). ``kvgate serve`` has no
Envoy to tell: the same mapping is in its JSON request log line.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.envoy import start_epp_behind_envoy
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# usage.prompt_tokens + usage.completion_tokens under envoy.lb/x-gateway-inference-request-cost
CONFIG = (
    ROOT
    / "tests/data/llm-d-configs"
    / "llm-d-router__pkg_epp_framework_plugins_requestcontrol_requestattributereporter_README.md_0.yaml"
)
LOG_FORMAT = (
    "rid=%REQ(X-REQUEST-ID)% cost=%DYNAMIC_METADATA(envoy.lb:x-gateway-inference-request-cost)%\n"
)


def post(url: str, rid: str, **body: Any) -> dict[str, Any] | str:
    data = json.dumps({"model": "sim-model", "prompt": "Count the tokens.", **body}).encode()
    req = urllib.request.Request(
        url + "/v1/completions",
        data=data,
        headers={"content-type": "application/json", "x-request-id": rid},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read().decode()
    return raw if body.get("stream") else json.loads(raw)


def sse_usage(raw: str) -> dict[str, Any]:
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data: {")]
    usage: dict[str, Any] = next(e["usage"] for e in reversed(events) if e.get("usage"))
    return usage


def test_the_epp_reports_to_envoy_and_serve_logs_it(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    assert CONFIG.exists(), CONFIG
    sim = start_sim(spawn, seed=3, speed=200)
    port = free_port()
    serve = spawn(
        kvgate_cmd(
            "serve", "--port", str(port), "--endpoint", sim.url, "--log-format", "json",
            "--config", str(CONFIG),
        ),
        name="serve",
    )  # fmt: skip
    front_door = start_epp_behind_envoy(
        spawn,
        tmp_path,
        "--endpoint", f"127.0.0.1:{sim.port}", "--config-file", str(CONFIG),
        log_format=LOG_FORMAT,
    )  # fmt: skip
    access_log = front_door.access_log
    serve.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=30)

    def logged_cost(rid: str) -> str:
        found: list[str] = []

        def logged() -> bool:
            text = access_log.read_text() if access_log.exists() else ""
            found[:] = re.findall(rf"^rid={re.escape(rid)} cost=(\S+)$", text, re.M)
            return bool(found)

        wait_until(logged, timeout_s=5, what=f"access log line for {rid}")
        return found[0]

    front = front_door.url
    # the EPP may not have scraped the replica yet: the first requests may be refused
    wait_until(lambda: _answers(front), timeout_s=10, what="Envoy -> epp -> sim answering")
    answer = post(front, "json", max_tokens=5)
    assert isinstance(answer, dict)
    usage = answer["usage"]
    assert float(logged_cost("json")) == usage["prompt_tokens"] + usage["completion_tokens"]
    raw = post(front, "sse", max_tokens=6, stream=True, stream_options={"include_usage": True})
    assert isinstance(raw, str)
    usage = sse_usage(raw)
    assert float(logged_cost("sse")) == usage["prompt_tokens"] + usage["completion_tokens"]
    # a stream without usage: every count reads 0, so nothing is reported ("-" in the log)
    post(front, "sse-no-usage", max_tokens=3, stream=True)
    assert logged_cost("sse-no-usage") == "-"

    # kvgate serve: the request log line carries the same mapping
    answer = post(f"http://127.0.0.1:{port}", "serve-json", max_tokens=4)
    assert isinstance(answer, dict)
    usage = answer["usage"]
    cost = usage["prompt_tokens"] + usage["completion_tokens"]

    def line() -> dict[str, Any] | None:
        for text in serve.log().splitlines():
            if text.startswith("{") and '"serve-json"' in text:
                record: dict[str, Any] = json.loads(text)
                return record
        return None

    wait_until(lambda: line() is not None, timeout_s=5, what="serve's request line")
    record = line()
    assert record is not None
    assert record["dynamic_metadata"] == {"envoy.lb": {"x-gateway-inference-request-cost": cost}}


def _answers(front: str) -> bool:
    try:
        post(front, "warm-up", max_tokens=1)
    except OSError:
        return False
    return True
