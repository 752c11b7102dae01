"""Every LLMInferenceService spec field acts or is refused by name (kvgate.k8s.specfields).

* The table covers KServe's CRD exactly (tests/data/llmisvc/kserve-crd-spec-fields.txt) and
  docs/kubernetes.md prints it as it is.
* KServe's own samples (tests/data/llmisvc/kserve__*.yaml, SOURCES.md) are rendered: every
  field a sample sets either shows in the manifests (checked per field below) or the render
  fails with one line naming it; what renders validates against the Kubernetes schemas.
* Fields no KServe sample sets are fed from a service built on KServe's CPU sample.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from k8s.test_render import BUILT_IN_GROUPS, K8S_VERSION, SCHEMA_FOR, SCHEMAS
from kvgate.config import load_llm_inference_service
from kvgate.errors import ConfigError
from kvgate.k8s import specfields
from kvgate.k8s.render import render
from kvgate.up.run import lora_args

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "llmisvc"
CPU_SAMPLE = DATA / "kserve__opt-125m-cpu_llm-inference-service-facebook-opt-125m-cpu.yaml"
PD_SAMPLE = DATA / "kserve__opt-125m-cpu_llm-inference-service-pd-facebook-opt-125m-cpu.yaml"
Manifests = list[dict[str, Any]]


def crd_fields() -> dict[str, str]:
    lines = (DATA / "kserve-crd-spec-fields.txt").read_text().splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def covered(path: str) -> bool:
    """In the table, or inside a field the table takes whole (opaque)."""
    if path in specfields.BY_PATH:
        return True
    parts = path.replace("[]", "").split(".")
    for n in range(len(parts) - 1, 1, -1):
        field = specfields.BY_PATH.get(".".join(parts[:n]))
        if field is not None and field.opaque:
            return True
    return False


def test_table_is_kserves_crd() -> None:
    crd = crd_fields()
    assert [p for p in crd if not covered(p)] == []
    assert [p for p in specfields.BY_PATH if p not in crd] == []
    for field in specfields.FIELDS:  # the version marks agree with the CRD
        both = crd[field.path] == "v1alpha1,v1alpha2"
        assert (field.versions == "") == both, field.path
        assert both or crd[field.path] == field.versions, field.path


def test_docs_print_the_table() -> None:
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert specfields.markdown_table() in docs


# ---- feeding files ---------------------------------------------------------------------


def as_service(doc: dict[str, Any]) -> dict[str, Any]:
    """An LLMInferenceServiceConfig (KServe's presets) as the service it would be merged into:
    KServe's CPU sample with the preset's spec on top."""
    if doc["kind"] == "LLMInferenceService":
        return doc
    base = yaml.safe_load(CPU_SAMPLE.read_text())
    return merge(base, {"spec": doc["spec"]})


def merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in top.items()}}
    return top


def load(tmp_path: Path, doc: dict[str, Any]) -> Any:
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_llm_inference_service(path)


def set_fields(doc: dict[str, Any]) -> set[str]:
    """The table paths of the fields ``doc`` sets."""
    return {specfields._table_path(t) for t, _ in specfields._walk(doc.get("spec") or {}, "spec")}


def pods(manifests: Manifests) -> list[dict[str, Any]]:
    out = []
    for m in manifests:
        spec = m.get("spec") or {}
        if "template" in spec:
            out.append(spec["template"])
        lwt = spec.get("leaderWorkerTemplate") or {}
        out += [lwt[k] for k in ("leaderTemplate", "workerTemplate") if k in lwt]
    return out


def all_args(manifests: Manifests) -> str:
    """Every container's command and args, joined (vLLM's flags wherever they are)."""
    return " ".join(
        str(a)
        for pod in pods(manifests)
        for c in [*pod["spec"].get("containers", []), *pod["spec"].get("initContainers", [])]
        for a in [*(c.get("command") or []), *(c.get("args") or [])]
    )


def named(manifests: Manifests, suffix: str) -> dict[str, Any]:
    return next(m for m in manifests if m["metadata"]["name"].endswith(suffix))


def vllm_script(manifests: Manifests, suffix: str = "-kserve") -> str:
    pod = named(manifests, suffix)["spec"]["template"]["spec"]
    return " ".join(map(str, pod["containers"][0]["args"]))


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    env = manifest["spec"]["template"]["spec"]["containers"][0].get("env") or []
    return {e["name"]: e.get("value") for e in env}


def _get(doc: Any, path: str) -> Any:
    for key in path.split(".")[1:]:
        doc = doc[key]
    return doc


#: How each acting field shows in the manifests: (doc, manifests) -> True.
Evidence = Callable[[dict[str, Any], Manifests], bool]
EVIDENCE: dict[str, Evidence] = {
    "spec.replicas": lambda d, m: any(
        x["spec"].get("replicas") == d["spec"]["replicas"]
        for x in m
        if x["kind"] in ("Deployment", "LeaderWorkerSet")
    ),
    "spec.model.uri": lambda d, m: (
        d["spec"]["model"]["uri"].split("://", 1)[1].split("/", 1)[-1]
        in " ".join(
            " ".join(map(str, p["spec"]["containers"][0].get("args") or [])) for p in pods(m)
        )
    ),
    "spec.model.name": lambda d, m: (
        f"--served-model-name {d['spec']['model']['name']}"
        in vllm_script(m, "-kserve") + vllm_script(m, "-kserve")
        if any(x["kind"] == "Deployment" and x["metadata"]["name"].endswith("-kserve") for x in m)
        else "--served-model-name" in yaml.safe_dump(m)
    ),
    "spec.model.lora.adapters[].name": lambda d, m: all(
        f"{a['name']}=" in vllm_script(m) for a in d["spec"]["model"]["lora"]["adapters"]
    ),
    "spec.model.lora.adapters[].uri": lambda d, m: "--lora-modules" in vllm_script(m),
    "spec.model.lora.maxRank": lambda d, m: (
        f"--max-lora-rank={d['spec']['model']['lora']['maxRank']}" in vllm_script(m)
    ),
    "spec.model.lora.maxAdapters": lambda d, m: (
        f"--max-loras={d['spec']['model']['lora']['maxAdapters']}" in vllm_script(m)
    ),
    "spec.model.lora.maxCpuAdapters": lambda d, m: (
        f"--max-cpu-loras={d['spec']['model']['lora']['maxCpuAdapters']}" in vllm_script(m)
    ),
    "spec.labels": lambda d, m: all(
        p["metadata"]["labels"].get(k) is not None for p in pods(m)[:1] for k in d["spec"]["labels"]
    ),
    "spec.annotations": lambda d, m: (
        named(m, "-kserve")["spec"]["template"]["metadata"]["annotations"]
        == d["spec"]["annotations"]
    ),
    "spec.rolloutStrategy.maxUnavailable": lambda d, m: (
        named(m, "-kserve")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"]
        == d["spec"]["rolloutStrategy"]["maxUnavailable"]
    ),
    "spec.rolloutStrategy.maxSurge": lambda d, m: (
        named(m, "-kserve")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        == d["spec"]["rolloutStrategy"]["maxSurge"]
    ),
    "spec.template": lambda d, m: bool(pods(m)),
    "spec.worker": lambda d, m: any(x["kind"] == "LeaderWorkerSet" for x in m),
    "spec.parallelism.tensor": lambda d, m: "--tensor-parallel-size" in all_args(m),
    "spec.parallelism.data": lambda d, m: "--data-parallel-size " in all_args(m),
    "spec.parallelism.dataLocal": lambda d, m: "--data-parallel-size-local" in all_args(m),
    "spec.parallelism.expert": lambda d, m: (
        ("--enable-expert-parallel" in all_args(m)) == bool(d["spec"]["parallelism"]["expert"])
    ),
    "spec.prefill.replicas": lambda d, m: (
        named(m, "-kserve-prefill")["spec"]["replicas"] == d["spec"]["prefill"]["replicas"]
    ),
    "spec.prefill.template": lambda d, m: bool(named(m, "-kserve-prefill")),
    "spec.router.gateway.refs[].name": lambda d, m: (
        named(m, "-kserve-route")["spec"]["parentRefs"][0]["name"]
        == d["spec"]["router"]["gateway"]["refs"][0]["name"]
    ),
    "spec.router.gateway.refs[].namespace": lambda d, m: (
        named(m, "-kserve-route")["spec"]["parentRefs"][0]["namespace"]
        == d["spec"]["router"]["gateway"]["refs"][0]["namespace"]
    ),
    "spec.router.gateway.refs[].sectionName": lambda d, m: (
        named(m, "-kserve-route")["spec"]["parentRefs"][0]["sectionName"]
        == d["spec"]["router"]["gateway"]["refs"][0]["sectionName"]
    ),
    "spec.router.route": lambda d, m: any(x["kind"] == "HTTPRoute" for x in m),
    "spec.router.route.http.spec": lambda d, m: (
        len(named(m, "-kserve-route")["spec"]["rules"])
        == len(d["spec"]["router"]["route"]["http"]["spec"]["rules"])
    ),
    "spec.router.scheduler": lambda d, m: (
        "kvgate"
        in named(m, "-router-scheduler")["spec"]["template"]["spec"]["containers"][0]["command"]
    ),
    "spec.router.scheduler.template": lambda d, m: bool(named(m, "-router-scheduler")),
    "spec.router.scheduler.config.inline": lambda d, m: (
        "--config-text"
        in named(m, "-router-scheduler")["spec"]["template"]["spec"]["containers"][0]["args"]
    ),
    "spec.router.scheduler.labels": lambda d, m: (
        named(m, "-router-scheduler")["spec"]["template"]["metadata"]["labels"].items()
        >= d["spec"]["router"]["scheduler"]["labels"].items()
    ),
    "spec.router.scheduler.annotations": lambda d, m: (
        named(m, "-router-scheduler")["spec"]["template"]["metadata"]["annotations"]
        == d["spec"]["router"]["scheduler"]["annotations"]
    ),
    "spec.router.scheduler.replicas": lambda d, m: (
        named(m, "-router-scheduler")["spec"]["replicas"]
        == d["spec"]["router"]["scheduler"]["replicas"]
    ),
    "spec.tracing": lambda d, m: (
        "--tracing=true"
        in named(m, "-router-scheduler")["spec"]["template"]["spec"]["containers"][0]["args"]
        and "--otlp-traces-endpoint" in vllm_script(m)
    ),
    "spec.tracing.exporterEndpoint": lambda d, m: (
        env_of(named(m, "-router-scheduler"))["OTEL_EXPORTER_OTLP_ENDPOINT"]
        == d["spec"]["tracing"]["exporterEndpoint"]
        == env_of(named(m, "-kserve"))["OTEL_EXPORTER_OTLP_ENDPOINT"]
    ),
    "spec.tracing.exporter": lambda d, m: (
        env_of(named(m, "-kserve"))["OTEL_TRACES_EXPORTER"] == d["spec"]["tracing"]["exporter"]
    ),
    "spec.tracing.sampler": lambda d, m: (
        env_of(named(m, "-kserve"))["OTEL_TRACES_SAMPLER"] == d["spec"]["tracing"]["sampler"]
    ),
    "spec.tracing.samplerArg": lambda d, m: (
        env_of(named(m, "-router-scheduler"))["OTEL_TRACES_SAMPLER_ARG"]
        == d["spec"]["tracing"]["samplerArg"]
    ),
    "spec.prefill.labels": lambda d, m: (
        named(m, "-kserve-prefill")["spec"]["template"]["metadata"]["labels"].items()
        >= d["spec"]["prefill"]["labels"].items()
    ),
    "spec.prefill.annotations": lambda d, m: (
        named(m, "-kserve-prefill")["spec"]["template"]["metadata"]["annotations"]
        == d["spec"]["prefill"]["annotations"]
    ),
    "spec.prefill.rolloutStrategy.maxUnavailable": lambda d, m: (
        named(m, "-kserve-prefill")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"]
        == d["spec"]["prefill"]["rolloutStrategy"]["maxUnavailable"]
    ),
    "spec.prefill.rolloutStrategy.maxSurge": lambda d, m: (
        named(m, "-kserve-prefill")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        == d["spec"]["prefill"]["rolloutStrategy"]["maxSurge"]
    ),
    "spec.storageInitializer.enabled": lambda d, m: "storage-initializer" not in yaml.safe_dump(m),
    "spec.kvCacheOffloading.cpu": lambda d, m: "OffloadingConnector" in yaml.safe_dump(m),
}
#: Acting fields that only group others (their children carry the evidence), or whose effect
#: is the absence of something (checked where they occur in a test below).
STRUCTURAL = {
    "spec.model",
    "spec.model.lora",
    "spec.model.lora.adapters",
    "spec.prefill",
    "spec.router",
    "spec.router.gateway",
    "spec.router.gateway.refs",
    "spec.router.route.http",
    "spec.router.route.http.refs",
    "spec.router.route.http.refs[].name",
    "spec.router.scheduler.config",
    "spec.rolloutStrategy",
    "spec.parallelism",
    "spec.storageInitializer",
    "spec.kvCacheOffloading",
    "spec.kvCacheOffloading.evictionPolicy",
    "spec.parallelism.pipeline",
    "spec.parallelism.dataRPCPort",
    "spec.prefill.rolloutStrategy",
    "spec.prefill.kvCacheOffloading",
    "spec.prefill.kvCacheOffloading.cpu",
    "spec.prefill.kvCacheOffloading.evictionPolicy",
}

#: Fields that no KServe sample sets, on KServe's CPU sample (acting ones).
OVERLAY_ACTS = {
    "spec": {
        "annotations": {"example.com/team": "search"},
        "rolloutStrategy": {"maxUnavailable": 0, "maxSurge": "25%"},
        "storageInitializer": {"enabled": False},
        "router": {
            "gateway": {"refs": [{"name": "edge", "namespace": "gw", "sectionName": "https"}]},
            "scheduler": {
                "replicas": 2,
                "labels": {"example.com/tier": "router"},
                "annotations": {"example.com/owner": "platform"},
            },
        },
    }
}
OVERLAY_PREFILL = {
    "spec": {
        "prefill": {
            "labels": {"example.com/stage": "prefill"},
            "annotations": {"example.com/owner": "platform"},
            "rolloutStrategy": {"maxUnavailable": "50%", "maxSurge": 1},
        }
    }
}
#: Every refused field at once (a value KServe's CRD accepts for each).
OVERLAY_REFUSED = {
    "spec": {
        "model": {"criticality": "Critical", "confidential": {"enabled": True}},
        "scaling": {"maxReplicas": 3, "keda": {"triggers": [{"type": "cpu"}]}},
        "baseRefs": [{"name": "kserve-config-llm-template"}],
        "kvCacheOffloading": {"cpu": "1Gi", "secondary": [{"fileSystem": {"emptyDir": {}}}]},
        "router": {
            "ingress": {},
            "route": {"group": "chat", "weight": 10},
            "scheduler": {
                "pool": {"ref": {"name": "existing-pool"}},
                "config": {"ref": {"name": "epp-config", "key": "config.yaml"}},
                "tokenizer": {"template": {"containers": [{"name": "main"}]}},
            },
        },
    }
}
REFUSED_BY_OVERLAY = [
    "spec.model.criticality",
    "spec.model.confidential",
    "spec.scaling",
    "spec.baseRefs",
    "spec.kvCacheOffloading.secondary",
    "spec.router.ingress",
    "spec.router.route.group",
    "spec.router.route.weight",
    "spec.router.scheduler.pool",
    "spec.router.scheduler.config.ref",
    "spec.router.scheduler.tokenizer",
]


def fed_documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(DATA.glob("kserve__*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and str(doc.get("kind", "")).startswith("LLMInferenceService"):
                docs.append((path.name, as_service(doc)))
    route = next(d for n, d in docs if "router-route" in n)
    text = yaml.safe_dump(route, sort_keys=False)
    for key, value in (
        ("IngressGatewayName", "edge"),
        ("IngressGatewayNamespace", "gw"),
        ("ModelBasedRoutingHeaderName", "x-model"),
    ):
        text = re.sub(r"\{\{\s*\.GlobalConfig\." + key + r"\s*\}\}", value, text)
    docs.append(
        ("router-route with the controller's .GlobalConfig written in", yaml.safe_load(text))
    )
    cpu = yaml.safe_load(CPU_SAMPLE.read_text())
    docs.append(("CPU sample + fields no sample sets", merge(cpu, OVERLAY_ACTS)))
    pd = yaml.safe_load(PD_SAMPLE.read_text())
    docs.append(("P/D sample + prefill fields no sample sets", merge(pd, OVERLAY_PREFILL)))
    return docs


@cache
def schema_validator(file: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)  # once per file: it is the slow part
    return jsonschema.Draft202012Validator(schema)


def validate(manifest: dict[str, Any]) -> None:
    """As tests/k8s/test_render.py validates: Kubernetes' own schemas (strict) for its kinds,
    the trimmed schemas of tests/data/k8s-schemas for the rest."""
    if manifest["apiVersion"] in BUILT_IN_GROUPS:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    key = (manifest["apiVersion"], manifest["kind"])
    file = SCHEMA_FOR.get(key, "leaderworkerset.v1.json" if key[1] == "LeaderWorkerSet" else None)
    if file is None:
        assert manifest["apiVersion"] in BUILT_IN_GROUPS, f"no schema for {key}"
        return
    schema_validator(file).validate(manifest)


def check_manifest(manifest: dict[str, Any]) -> None:
    """:func:`validate`; a LeaderWorkerSet's pod templates also as Deployment pod templates."""
    validate(manifest)
    if manifest["kind"] == "LeaderWorkerSet":
        for role in ("leaderTemplate", "workerTemplate"):
            template = manifest["spec"]["leaderWorkerTemplate"][role]
            validate({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                      "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}})  # fmt: skip


def check_document(tmp_path: Path, name: str, doc: dict[str, Any]) -> set[str]:
    """Render ``doc``: every field it sets shows in the manifests, or the render fails with
    one line per refused field naming it. Returns the table paths seen acting."""
    fields = set_fields(doc)
    table_refused = {
        p for p in fields if p in specfields.BY_PATH and specfields.BY_PATH[p].render == "refused"
    }
    unknown = {p for p in fields if not covered(p)}
    try:
        manifests = render(load(tmp_path, doc))
    except ConfigError as exc:
        lines = [str(p) for p in exc.problems]
        assert all("\n" not in line for line in lines)
        named_paths = {specfields._table_path(p.path) for p in exc.problems}
        if table_refused or unknown:
            assert table_refused <= named_paths, (name, lines)
            tops = {p for p in unknown if not any(p.startswith(u + ".") for u in unknown)}
            assert tops <= named_paths, (name, lines)
        else:  # refused for something inside an opaque field (the scheduler config, a template)
            assert len(lines) >= 1 and all(": " in line for line in lines), (name, lines)
        return set()
    assert not table_refused and not unknown, (name, table_refused, unknown)
    for manifest in manifests:  # where spec fields land (tests/k8s checks the other kinds)
        if manifest["kind"] in ("Deployment", "LeaderWorkerSet", "HTTPRoute"):
            check_manifest(manifest)
    acted = set()
    for path in fields:
        field = specfields.BY_PATH.get(path)
        if field is None or field.render != "acts":
            continue  # inside an opaque field
        if path in STRUCTURAL:
            acted.add(path)
            continue
        assert path in EVIDENCE, f"{name}: no check for {path}"
        assert EVIDENCE[path](doc, manifests), f"{name}: {path} does not show in the manifests"
        acted.add(path)
    return acted


def test_kserve_samples_act_or_are_refused_by_name(tmp_path: Path) -> None:
    acted: set[str] = set()
    for i, (name, doc) in enumerate(fed_documents()):
        folder = tmp_path / str(i)
        folder.mkdir()
        acted |= check_document(folder, name, doc)
    # what the files fed here exercise (each checked above in the manifests)
    for path in (
        "spec.labels",
        "spec.annotations",
        "spec.model.lora.maxRank",
        "spec.model.lora.maxAdapters",
        "spec.model.lora.maxCpuAdapters",
        "spec.worker",
        "spec.prefill.template",
        "spec.rolloutStrategy.maxSurge",
        "spec.router.gateway.refs[].sectionName",
        "spec.router.route.http.spec",
        "spec.router.scheduler.labels",
        "spec.router.scheduler.annotations",
        "spec.tracing.exporterEndpoint",
        "spec.storageInitializer.enabled",
        "spec.prefill.labels",
        "spec.prefill.rolloutStrategy.maxUnavailable",
    ):
        assert path in acted, path


def test_every_refused_field_is_one_line_naming_it(tmp_path: Path) -> None:
    doc = merge(yaml.safe_load(CPU_SAMPLE.read_text()), OVERLAY_REFUSED)
    svc = load(tmp_path, doc)
    for command in ("render", "up"):
        check = specfields.check_fields(svc, command)  # type: ignore[arg-type]
        assert sorted(p.path for p in check.refused) == sorted(REFUSED_BY_OVERLAY)
    with pytest.raises(ConfigError) as info:
        render(svc)
    lines = str(info.value).splitlines()
    for path in REFUSED_BY_OVERLAY:
        assert sum(f"svc.yaml: {path}: " in line for line in lines) == 1, (path, lines)
    assert {specfields.BY_PATH[p].render for p in REFUSED_BY_OVERLAY} == {"refused"}


def test_kserve_sample_with_a_field_of_no_version_is_refused(tmp_path: Path) -> None:
    """KServe's kv-cache-offloading sample nests kvCacheOffloading under ``spec.workload``,
    which neither CRD version has (the API server would drop it): one line, not a silent
    drop."""
    path = DATA / "kserve__kv-cache-offloading_llm-inference-service-kv-cache-offloading.yaml"
    doc = next(
        d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "LLMInferenceService"
    )
    with pytest.raises(ConfigError) as info:
        render(load(tmp_path, doc))
    assert [p.path for p in info.value.problems] == ["spec.workload"]
    assert "not a field of KServe's LLMInferenceService" in str(info.value)


def test_route_refs_render_no_route(tmp_path: Path) -> None:
    doc = merge(
        yaml.safe_load(CPU_SAMPLE.read_text()),
        {"spec": {"router": {"route": {"http": {"refs": [{"name": "my-route"}]}}}}},
    )
    kinds = [m["kind"] for m in render(load(tmp_path, doc))]
    assert "HTTPRoute" not in kinds and "InferencePool" in kinds


def test_up_refuses_what_it_cannot_run_and_names_what_is_kubernetes_only(tmp_path: Path) -> None:
    dp = (
        DATA
        / "kserve__dp-ep_deepseek-r1-gpu-rdma-roce_llm-inference-service-dp-ep-deepseek-r1-gpu-naive.yaml"
    )
    svc = load(tmp_path, yaml.safe_load(dp.read_text()))
    refused = [p.path for p in specfields.check_fields(svc, "up").refused]
    assert "spec.worker" in refused and "spec.parallelism" in refused
    doc = merge(yaml.safe_load(CPU_SAMPLE.read_text()), OVERLAY_ACTS)
    check = specfields.check_fields(load(tmp_path, doc), "up")
    assert check.refused == ()
    assert {"spec.annotations", "spec.rolloutStrategy", "spec.router.gateway"} <= set(check.local)
    lora = DATA / "kserve__lora-adapters_test-examples_02-lora-multi-hf-cpu.yaml"
    svc = load(tmp_path, yaml.safe_load(lora.read_text()))
    assert "--max-loras=2" in lora_args(svc, "sim") and "--max-lora-rank=64" in lora_args(
        svc, "vllm"
    )


def test_up_turns_on_tracing_from_spec_tracing(tmp_path: Path) -> None:
    import argparse

    from kvgate.up.run import spec_tracing_env

    preset = DATA / "kserve__config_llmisvcconfig_config-llm-tracing.yaml"
    doc = as_service(yaml.safe_load(preset.read_text()))
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = spec_tracing_env(argparse.Namespace(file=path, example=False))
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.05",
    }
    path.write_text(CPU_SAMPLE.read_text())  # no spec.tracing: tracing stays as --tracing says
    assert spec_tracing_env(argparse.Namespace(file=path, example=False)) == {}
