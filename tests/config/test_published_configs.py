"""Every published EndpointPickerConfig under tests/data/llm-d-configs/ (see SOURCES.md) loads,
except those in EXPECTED_FAILURES, which fail with exactly the reason given.

The table is the to-do list: a config that stops loading fails the test, and so does one in
the table that starts loading (or fails for another reason), so the table is kept true. The
reason is the first problem's ``path: message`` with any trailing ``(known: ...)`` list cut.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import prometheus_client
import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.config.build import trial_context
from kvgate.errors import ConfigError, SchedulingFailedError
from kvgate.flowcontrol import FlowItem
from kvgate.flowcontrol.build import build_flow_controller
from kvgate.plugins.base import RequestHeaderProcessor
from kvgate.scheduling.types import ROLE_LABEL, Endpoint, Metrics, Request, ResponseInfo

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "llm-d-configs"
_KNOWN = re.compile(r" \(known: [^)]*\)$")

#: file -> the one-line reason kvgate refuses it (types it cannot act on, test doubles).
EXPECTED_FAILURES: dict[str, str] = {
    "llm-d-router__deploy_config_epp-kvcache-load-config.yaml": (
        "plugins[kvcache-aware-scorer].parameters: plugin type 'kvcache-aware-scorer'"
        " is not supported: llm-d-inference-scheduler v0.1's scorer over a Redis "
        "KV-block index; use precise-prefix-cache-scorer, which follows the engines' "
        "KV events"
    ),
    "llm-d-router__deploy_config_epp-prefix-cache-tracking-config.yaml": (
        "plugins[prefix-cache-scorer].parameters.mode: 'cache_tracking' is not "
        "supported: cache_tracking read llm-d-inference-scheduler v0.1's Redis "
        "KV-block index; use precise-prefix-cache-scorer (the engines' KV events)"
    ),
    "llm-d-router__deploy_config_pd-topology-epp-config.yaml": (
        "plugins[topology-extractor].parameters: plugin type 'topology-extractor' is "
        "not supported: kvgate has no node/accelerator topology attributes to extract"
        " into"
    ),
    "llm-d-router__deploy_config_sim-epp-gpu-config.yaml": (
        "plugins[dcgm-source].parameters: plugin type 'dcgm-data-source' is not "
        "supported: NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads "
        "only model-server metrics"
    ),
    "llm-d-router__deploy_config_sim-epp-gpu-config@d4782911a2b6.yaml": (
        "plugins[dcgm-source].parameters: plugin type 'dcgm-data-source' is not "
        "supported: NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads "
        "only model-server metrics"
    ),
    "llm-d-router__pkg_epp_framework_plugins_README.md_0.yaml": (
        "plugins[discovery].parameters: plugin type 'multicluster-file-discovery' is "
        "not supported: kvgate schedules over the endpoints of one pool; it has no "
        "cluster-endpoint discovery or cross-cluster routing"
    ),
    "llm-d-router__pkg_epp_framework_plugins_datalayer_extractor_dcgm_README.md_0.yaml": (
        "plugins[dcgm-source].parameters: plugin type 'dcgm-data-source' is not "
        "supported: NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads "
        "only model-server metrics"
    ),
    "llm-d-router__pkg_epp_framework_plugins_datalayer_source_dcgm_README.md_0.yaml": (
        "plugins[dcgm-source].parameters: plugin type 'dcgm-data-source' is not "
        "supported: NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads "
        "only model-server metrics"
    ),
    "llm-d__guides_agentic-serving_router_agentic-serving-gpu.values.yaml": (
        "schedulingProfiles[decode].plugins[1].pluginRef: unknown plugin 'active-request-scorer'"
    ),
    # the guide's slip: llm-d's decoder drops the unknown field and then refuses the config
    # too ("revisionGating.requireRoles is required when revisionGating.mode=max-role")
    "llm-d__guides_wide-ep-lws_router_wide-ep-lws.values.yaml": (
        "plugins[disaggregatedset-rollout-screener].parameters.revisionGating.requiredRoles: "
        "unknown parameter"
    ),
}


def _files() -> list[Path]:
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files, f"{CONFIGS}: no published configs found"
    return files


def _outcome(path: Path) -> str | None:
    """None when the file loads, else its first problem as ``path: message``."""
    try:
        load_picker_config(path, env={})
    except ConfigError as exc:
        first = exc.problems[0]
        return _KNOWN.sub("", f"{first.path}: {first.message}")
    return None


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_published_config(path: Path) -> None:
    assert _outcome(path) == EXPECTED_FAILURES.get(path.name)


def _pool() -> list[Endpoint]:
    """One endpoint per P/D/E role (under llm-d's label and the docs' plain ``role``), scraped."""
    now = time.monotonic()
    roles = ("prefill", "decode", "encode", "prefill", "decode", "both")
    return [
        Endpoint(
            f"ep{i}",
            f"10.0.0.{i + 1}",
            8000,
            {ROLE_LABEL: role, "role": role},
            Metrics(waiting_queue_size=i % 3, kv_cache_usage_percent=0.1 * i, updated_at=now),
        )
        for i, role in enumerate(roles)
    ]


@pytest.mark.parametrize(
    "path", [p for p in _files() if p.name not in EXPECTED_FAILURES], ids=lambda p: p.name
)
def test_published_config_acts(path: Path) -> None:
    """A config that loads also schedules: its plugins run over a P/D pool and pick a member,
    its RequestHeader / PreRequest / ResponseComplete hooks run, and its flow controller, if
    any, admits (tokenizers are the built-in one, as in ``kvgate config check``; background
    work such as KV-event subscribers is not started)."""
    config = load_picker_config(path, env={})
    scheduler = build_scheduler(config, trial_context())
    pool = _pool()
    flow = build_flow_controller(
        config,
        lambda: pool,
        metrics_registry=prometheus_client.CollectorRegistry(),
        plugins=scheduler.plugins,
    )
    if flow is not None:  # an idle pool admits at once, through the configured policies
        assert flow.try_admit(FlowItem("r1", "tenant-a", 0, 100, "m"))
    request = Request(
        "r1",
        "m",
        kind="chat",
        messages=[{"role": "user", "content": "hello " * 64}],
        headers={"test-epp-endpoint-selection": "10.0.0.2:8000"},  # GIE conformance's filter
    )
    for plugin in scheduler.plugins:  # agent-identity: before admission, as RequestControl
        if isinstance(plugin, RequestHeaderProcessor):
            plugin.request_header(request)
    if scheduler.handler.type_name == "test-profile-handler":  # llm-d's double: always fails
        with pytest.raises(SchedulingFailedError):
            scheduler.schedule(request, pool)
        return
    result = scheduler.schedule(request, pool)
    target = result.primary.targets[0]
    assert target.name in {e.name for e in pool}  # a data-parallel handler may move the port
    scheduler.pre_request(request, result)
    scheduler.response_complete(request, ResponseInfo(200, None, 64, 8), target)


def test_every_table_entry_names_a_file_and_sources_lists_every_file() -> None:
    names = {p.name for p in _files()}
    assert set(EXPECTED_FAILURES) <= names
    sources = (CONFIGS / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in names)
    loaded = len(names) - len(EXPECTED_FAILURES)
    print(f"published EndpointPickerConfigs loaded: {loaded}/{len(names)}")
