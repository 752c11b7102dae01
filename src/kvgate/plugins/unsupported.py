"""llm-d plugin types kvgate recognises but cannot act on, each with the reason.

A configuration naming one fails at load time (``kvgate config check`` and start-up) with
``plugin type '<type>' is not supported: <reason>`` instead of a bare "unknown type", so the
user learns whether to drop the plugin or run llm-d for it. A type listed here that later
gets a real module in ``BUILTIN_MODULES`` is registered as the real plugin instead.
"""

from __future__ import annotations

_MULTICLUSTER = (
    "kvgate schedules over the endpoints of one pool; it has no cluster-endpoint "
    "discovery or cross-cluster routing"
)


#: llm-d type -> why kvgate rejects it (llm-d-router cmd/epp/runner/runner.go registrations).
UNSUPPORTED: dict[str, str] = {
    "multicluster-approx-prefix-cache-producer": _MULTICLUSTER,
    "multicluster-prefix-cache-scorer": _MULTICLUSTER,
    "multicluster-queue-scorer": _MULTICLUSTER,
    "multicluster-kv-cache-utilization-scorer": _MULTICLUSTER,
    "multicluster-session-affinity-filter": _MULTICLUSTER,
    "multicluster-file-discovery": _MULTICLUSTER,
    "multicluster-metrics-data-source": _MULTICLUSTER,
    "multicluster-metrics-extractor": _MULTICLUSTER,
    "kvcache-aware-scorer": "llm-d-inference-scheduler v0.1's scorer over a Redis KV-block "
    "index; use precise-prefix-cache-scorer, which follows the engines' KV events",
}
