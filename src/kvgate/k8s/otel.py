"""``spec.tracing`` of an LLMInferenceService: the OpenTelemetry settings of every component.

As KServe's controller applies it: present (even ``{}``) turns tracing on, with the defaults
of KServe's ``kserve-config-llm-tracing`` preset for the fields left out. The EPP gets
``--tracing=true`` and the ``OTEL_*`` variables (service ``inference-scheduler``); vLLM gets
``--otlp-traces-endpoint``, ``--collect-detailed-traces all`` and the same variables
(service ``inference-server-decode`` / ``-prefill``); every traced pod also gets the
Kubernetes resource attributes (namespace, node, pod, service name) from the downward API.
``kvgate up`` uses :func:`otel_env` to configure its gateway's tracing the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.config.llmisvc import LLMInferenceService
from kvgate.errors import ConfigError, Problem

SCHEDULER_SERVICE = "inference-scheduler"
SERVER_SERVICE = "inference-server"
#: KServe's kserve-config-llm-tracing preset: what an empty ``tracing: {}`` means.
DEFAULTS: Mapping[str, str] = {
    "exporterEndpoint": "http://otel-collector:4317",
    "exporter": "otlp",
    "sampler": "parentbased_traceidratio",
    "samplerArg": "0.05",
}


@dataclass(frozen=True, slots=True)
class Tracing:
    endpoint: str
    exporter: str
    sampler: str
    sampler_arg: str


def tracing_of(svc: LLMInferenceService) -> Tracing | None:
    """``spec.tracing`` with KServe's defaults filled in; None when tracing is off."""
    spec = svc.raw.get("spec")
    raw = spec.get("tracing") if isinstance(spec, Mapping) else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [Problem(svc.source, "spec.tracing", "expected a mapping ({} for defaults)")]
        )
    values: dict[str, str] = {}
    for key, default in DEFAULTS.items():
        value = raw.get(key, default)
        if not isinstance(value, str):
            path = f"spec.tracing.{key}"
            raise ConfigError([Problem(svc.source, path, f"expected a string, got {value!r}")])
        values[key] = value
    return Tracing(
        endpoint=values["exporterEndpoint"],
        exporter=values["exporter"],
        sampler=values["sampler"],
        sampler_arg=values["samplerArg"],
    )


def otel_env(tracing: Tracing, service: str) -> dict[str, str]:
    """The ``OTEL_*`` variables of one component."""
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": tracing.endpoint,
        "OTEL_TRACES_EXPORTER": tracing.exporter,
        "OTEL_TRACES_SAMPLER": tracing.sampler,
        "OTEL_TRACES_SAMPLER_ARG": tracing.sampler_arg,
    }


def pod_env(tracing: Tracing, service: str, svc: LLMInferenceService) -> list[dict[str, Any]]:
    """A container's env entries: :func:`otel_env` plus the pod's resource attributes."""
    attrs = (
        f"k8s.namespace.name={svc.namespace},k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),"
        f"k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),llmisvc.name={svc.name}"
    )
    return [
        *({"name": k, "value": v} for k, v in otel_env(tracing, service).items()),
        _field_env("OTEL_RESOURCE_ATTRIBUTES_NODE_NAME", "spec.nodeName"),
        _field_env("OTEL_RESOURCE_ATTRIBUTES_POD_NAME", "metadata.name"),
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attrs},
    ]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def merge_env(env: Sequence[Mapping[str, Any]], extra: Sequence[dict[str, Any]]) -> list[Any]:
    """``env`` with ``extra`` appended, an entry of ``extra`` replacing one of the same name.

    ``extra`` goes last so ``$(OTEL_RESOURCE_ATTRIBUTES_*)`` expands (the kubelet expands
    references to variables defined earlier in the list).
    """
    names = {e["name"] for e in extra}
    return [*(e for e in env if e.get("name") not in names), *extra]


def vllm_flags(tracing: Tracing) -> list[str]:
    return ["--otlp-traces-endpoint", tracing.endpoint, "--collect-detailed-traces", "all"]
