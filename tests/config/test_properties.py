"""Property: any valid config (random built plugins, random weights) and any endpoint set
(random metrics and labels) yields a pick from the candidates or a named SchedulingError."""

from __future__ import annotations

import base64
import random
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.config import build_scheduler, load_picker_config
from kvgate.errors import NoCandidatesError, SchedulingError, SchedulingFailedError
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.types import ROLE_LABEL, Endpoint, Metrics, Request, ResponseInfo

SCORERS = (
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-size-scorer",
    "load-aware-scorer",
    "active-request-scorer",
    "session-affinity-scorer",
    "lora-affinity-scorer",
    "prefix-cache-scorer",
    "no-hit-lru-scorer",
)
FILTERS: dict[str, dict[str, Any]] = {
    "decode-filter": {},
    "prefill-filter": {},
    "by-label": {"label": "zone", "validValues": ["a"], "allowsNoLabel": True},
}
PICKERS = ("max-score-picker", "random-picker", "weighted-random-picker", "round-robin-picker")

weights = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=5),
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    scorers = draw(st.lists(st.sampled_from(SCORERS), unique=True, max_size=len(SCORERS)))
    filters = draw(st.lists(st.sampled_from(sorted(FILTERS)), unique=True, max_size=2))
    picker = draw(st.one_of(st.none(), st.sampled_from(PICKERS)))
    plugins: list[dict[str, Any]] = [{"type": f, "parameters": FILTERS[f]} for f in filters]
    plugins += [{"type": s} for s in scorers]
    if picker is not None:
        plugins.append(
            {"type": picker, "parameters": {"maxNumOfEndpoints": draw(st.integers(-1, 3))}}
        )
    doc: dict[str, Any] = {
        "apiVersion": draw(
            st.sampled_from(["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"])
        ),
        "kind": "EndpointPickerConfig",
        "plugins": plugins,
    }
    if draw(st.booleans()):  # explicit profile; otherwise llm-d's defaulting makes one
        refs: list[dict[str, Any]] = [{"pluginRef": f} for f in filters]
        for s in scorers:
            ref: dict[str, Any] = {"pluginRef": s}
            weight = draw(weights)
            if weight is not None:
                ref["weight"] = weight
            refs.append(ref)
        if picker is not None and draw(st.booleans()):
            refs.append({"pluginRef": picker})
        doc["schedulingProfiles"] = [{"name": "default", "plugins": refs}]
    return doc


@st.composite
def endpoints(draw: st.DrawFn) -> list[Endpoint]:
    n = draw(st.integers(min_value=0, max_value=8))
    out = []
    for i in range(n):
        labels: dict[str, str] = {}
        role = draw(st.sampled_from([None, "prefill", "decode", "both"]))
        if role is not None:
            labels[ROLE_LABEL] = role
        if draw(st.booleans()):
            labels["zone"] = draw(st.sampled_from(["a", "b"]))
        metrics = Metrics(
            waiting_queue_size=draw(st.integers(0, 500)),
            running_requests_size=draw(st.integers(0, 500)),
            kv_cache_usage_percent=draw(st.floats(0.0, 1.0)),
            active_models=frozenset(draw(st.lists(st.sampled_from(["lora-a", "lora-b"])))),
            max_active_models=draw(st.integers(0, 4)),
            cache_block_size=draw(st.sampled_from([0, 16])),
            cache_num_gpu_blocks=draw(st.sampled_from([0, 64, 1000])),
            updated_at=1.0,
        )
        out.append(Endpoint(f"ns/pod-{i}-rank-0", f"10.0.0.{i + 1}", 8000, labels, metrics))
    return out


@st.composite
def requests(draw: st.DrawFn) -> Request:
    headers = {}
    if draw(st.booleans()):
        target = f"ns/pod-{draw(st.integers(0, 9))}-rank-0"
        headers["x-session-token"] = base64.b64encode(target.encode()).decode()
    model = draw(st.sampled_from(["m", "lora-a"]))
    if draw(st.booleans()):
        text = draw(st.text(max_size=400))
        return Request("r", model, kind="completions", prompt=text, headers=headers)
    messages = [{"role": "user", "content": draw(st.text(max_size=200))}]
    return Request("r", model, kind="chat", messages=messages, headers=headers)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(configs(), endpoints(), st.lists(requests(), min_size=1, max_size=3), st.integers(0, 2**32))
def test_any_valid_config_picks_a_candidate_or_names_the_failure(
    doc: dict[str, Any], candidates: list[Endpoint], reqs: list[Request], seed: int
) -> None:
    config = load_picker_config(text=yaml.safe_dump(doc), source_name="generated.yaml", env={})
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(seed)))
    for i, request in enumerate(reqs):
        request.request_id = f"r{i}"
        try:
            result = scheduler.schedule(request, candidates)
        except NoCandidatesError:
            assert not candidates
            continue
        except SchedulingFailedError:
            assert candidates  # e.g. every endpoint filtered out
            continue
        except SchedulingError as exc:  # pragma: no cover - any other named failure is a bug
            raise AssertionError(f"unexpected scheduling error {exc!r}") from exc
        primary = result.primary
        assert primary.targets
        assert all(any(t is c for c in candidates) for t in primary.targets)
        assert any(result.target is c for c in candidates)
        scheduler.pre_request(request, result)
        scheduler.response_complete(request, ResponseInfo(status=200), result.target)
    scheduler.endpoints_removed([c.name for c in candidates[:1]])
