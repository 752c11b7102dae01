"""deploy/grafana: every series the dashboard queries is one kvgate really exports (a real
``kvgate serve`` in front of a real ``kvgate sim``, scraped after a few requests), the JSON is a
Grafana dashboard by Grafana's own models (grafana-foundation-sdk, generated from Grafana's
schema: a field the schema does not know would not survive the round trip), and the
Prometheus scrape config names the three jobs the dashboard's variables select."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard

from support.procs import Proc, free_port, kvgate_cmd
from support.sim import start_sim

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
#: PromQL words that look like identifiers but name no series.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, ranges, groupings,
    strings and Grafana's ``$variables`` left out); ``x_bucket`` stays as written."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or aggregation
        names.add(match.group())
    return names


def test_series_names_extractor() -> None:
    assert series_names(
        'histogram_quantile(0.9, sum by (le, job) (rate(a:b_bucket{job=~"$j", x="}"}[$__rate_interval])))'
    ) == {"a:b_bucket"}
    assert series_names("sum(rate(x_total[5m])) by (y) / on (z) group_left sum(w) > bool 1e3") == {
        "x_total",
        "w",
    }
    assert series_names('up{job="vllm"} offset 5m or vector(0)') == {"up"}


def dashboard() -> dict[str, Any]:
    path = GRAFANA / "kvgate.json"
    assert path.exists(), f"{path} is missing"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panel_queries(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def _sample_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        resp.read()


def test_every_panel_queries_series_kvgate_exports(spawn: Callable[..., Proc]) -> None:
    sim = start_sim(spawn, "--speed", "100")
    other = start_sim(spawn, "--speed", "100", name="sim2")
    port = free_port()
    endpoints = ["--endpoint", sim.url, "--endpoint", other.url]
    gateway = spawn(kvgate_cmd("serve", "--port", str(port), *endpoints), name="gw")
    base = f"http://127.0.0.1:{port}"
    gateway.wait_http(base + "/ready", timeout_s=30)
    messages = [{"role": "user", "content": "the same prefix " * 40}]
    for stream in (False, False, True):  # the second hits the cache; a stream fills TTFT
        body = {"model": sim.model, "messages": messages, "max_tokens": 2, "stream": stream}
        _post(base + "/v1/chat/completions", body)
    with pytest.raises(urllib.error.HTTPError) as refused:  # fills the error counters
        _post(base + "/v1/chat/completions", {"model": "no-such-model", "messages": messages})
    assert refused.value.code == 404
    refused.value.close()
    # a 503 from each replica: a retry and upstream errors are counted
    failing = {"model": sim.model, "messages": messages, "max_tokens": 2}
    with pytest.raises(urllib.error.HTTPError) as failed:
        _post(base + "/v1/chat/completions", failing, {"x-kvgate-sim-fault": "503"})
    assert failed.value.code >= 500
    failed.value.close()
    exported = _sample_names(base + "/metrics") | _sample_names(sim.url + "/metrics")
    exported |= _sample_names(other.url + "/metrics")
    queried: set[str] = set()
    for title, expr in panel_queries(dashboard()):
        names = series_names(expr)
        assert names, f"kvgate.json: panel {title!r}: no series in {expr!r}"
        missing = names - exported
        assert not missing, f"kvgate.json: panel {title!r}: {sorted(missing)} not exported"
        queried |= names
    # the llm-d course's dashboard series are there
    assert {"vllm_llmd_kv_cache_hit_rate", "vllm_llmd_time_to_first_token_seconds_bucket"} <= (
        queried
    )


def _lost(original: Any, back: Any, path: str = "$") -> list[str]:
    """Paths of ``original`` that are absent or different in ``back`` (extra defaults allowed)."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [path]
        out = []
        for key, value in original.items():
            out += (
                [f"{path}.{key}"] if key not in back else _lost(value, back[key], f"{path}.{key}")
            )
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(original, back, strict=True))
            for p in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if original == back else [f"{path}: {original!r} became {back!r}"]


@pytest.fixture(scope="module", autouse=True)
def _grafana_plugins() -> None:
    plugins.register_default_plugins()  # panel and Prometheus query models, as Grafana's


def test_dashboard_is_a_grafana_dashboard_by_its_schema() -> None:
    data = dashboard()
    model = Dashboard.from_json(data)
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _lost(data, back) == []
    assert model.title and model.uid and model.schema_version >= 36
    ids = [p.id_val for p in model.panels or []]
    assert len(ids) == len(set(ids)), "kvgate.json: panels[].id: ids must be unique"
    for panel in model.panels or []:
        if panel.type_val == "row":
            continue
        assert panel.grid_pos is not None and panel.grid_pos.x + panel.grid_pos.w <= 24
        targets = panel.targets or []  # type: ignore[union-attr]
        assert targets and all(isinstance(t, prometheus.Dataquery) for t in targets), (
            f"kvgate.json: panel {panel.title!r}: targets must be Prometheus queries"
        )
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "gateway_job", "vllm_job"}


def test_prometheus_scrapes_gateway_epp_and_replicas() -> None:
    config = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"kvgate-gateway", "kvgate-epp", "vllm"}
    assert jobs["kvgate-epp"]["static_configs"][0]["targets"] == ["127.0.0.1:9090"]
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        for target in job["static_configs"][0]["targets"]:
            assert re.fullmatch(r"[\w.-]+:\d+", target)
