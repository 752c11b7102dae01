"""Data-layer and request-handling types of llm-d that kvgate cannot act on, with the reason.

Registered as rejections (see :meth:`kvgate.plugins.registry.Registry.reject`): a config that
declares one fails at load time naming the type and why, instead of "unknown type".
"""

from __future__ import annotations

_K8S = (
    "kvgate discovers endpoints from --endpoint/--endpoints-file or the InferencePool "
    "watch, and has no generic Kubernetes object watch"
)

#: llm-d type -> why kvgate rejects it (llm-d-router pkg/epp/framework/plugins/datalayer,
#: .../requesthandling/parsers).
UNSUPPORTED: dict[str, str] = {
    "dcgm-data-source": "NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads "
    "only model-server metrics",
    "dcgm-extractor": "NVIDIA DCGM exporter metrics are hardware-specific; kvgate reads only "
    "model-server metrics",
    "topology-extractor": "kvgate has no node/accelerator topology attributes to extract into",
    "k8s-notification-source": _K8S,
    "file-discovery": "use kvgate's --endpoints-file (its own file format) for file-based "
    "endpoint discovery",
    "cross-replica-publisher": "kvgate runs one scheduler replica; it has no cross-replica "
    "state sync",
    "local-syncer": "kvgate runs one scheduler replica; it has no cross-replica state sync",
    "anthropic-parser": "kvgate's front doors parse the OpenAI API only",
    "vllmhttp-parser": "kvgate's front doors parse the OpenAI API only (no /inference/v1/generate)",
    "sglanghttp-parser": "kvgate's front doors parse the OpenAI API only (no SGLang /generate)",
}
