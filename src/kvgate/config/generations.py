"""EndpointPickerConfig generations: which ``apiVersion`` allows which sections and names.

One table, :data:`GENERATIONS`, keyed by ``apiVersion``. The loader checks the top-level
fields, the ``dataLayer`` shape and the feature gates against the file's generation, and
turns a name from another generation into one line saying what it is called here.

Renames between generations (field paths; each row's sources in docs/config.md):

=====================================  =====================================  ================
older                                  newer                                  since
=====================================  =====================================  ================
``data``                               ``dataLayer``                          GIE v1.5, llm-d
``parser``                             ``requestHandler.parsers[]``           llm-d v1alpha1
``dataLayer.discovery.pluginRef``      ``dataLayer.discovery.endpoints.pluginRef``  llm-d.ai/v1
``dataLayer.crossReplicaSyncerPluginRef``  ``dataLayer.crossReplica.syncerPluginRef``  llm-d.ai/v1
``dataLayer.crossReplicaSyncInterval`` ``dataLayer.crossReplica.syncInterval``  llm-d.ai/v1
``dataLayer.crossReplicaPublishTimeout``  ``dataLayer.crossReplica.publishTimeout``  llm-d.ai/v1
=====================================  =====================================  ================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

GIE = "inference.networking.x-k8s.io/v1alpha1"
GIE_DOCS = "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1"
LLMD_V1ALPHA1 = "llm-d.ai/v1alpha1"
LLMD_V1 = "llm-d.ai/v1"

_COMMON = (
    "apiVersion",
    "kind",
    "plugins",
    "schedulingProfiles",
    "featureGates",
    "saturationDetector",
    "flowControl",
)
_V1ALPHA1_DATA_LAYER = (
    "sources",
    "injectDefaults",
    "discovery",
    "peerDiscovery",
    "crossReplicaSyncerPluginRef",
    "crossReplicaSyncInterval",
    "crossReplicaPublishTimeout",
)
_V1_DATA_LAYER = ("sources", "injectDefaults", "discovery", "peerDiscovery", "crossReplica")

_TO_V1 = "renamed in llm-d.ai/v1: write"
_FROM_V1 = "is the llm-d.ai/v1 form; in this apiVersion write"


@dataclass(frozen=True, slots=True)
class Generation:
    """What one ``apiVersion`` accepts. Field paths are relative to the document root."""

    api_version: str
    origin: str  # who publishes it, for messages and docs
    top_fields: tuple[str, ...]
    data_layer_fields: tuple[str, ...]
    feature_gates: tuple[str, ...]
    #: a field path that belongs to another generation -> what to write instead
    renamed: Mapping[str, str] = field(default_factory=dict)
    #: llm-d's start-up notice for this apiVersion (a warning line), if it is deprecated
    deprecation: str | None = None
    #: how llm-d's router treats the file differently (``config check --strict``)
    strict_notes: tuple[str, ...] = ()
    #: ``discovery.endpoints.pluginRef`` (v1) rather than ``discovery.pluginRef``
    nested_discovery: bool = False


_GIE_FIELDS = (*_COMMON, "data", "dataLayer", "parser", "requestHandler")
_GIE_GATES = ("dataLayer", "flowControl", "prepareDataPlugins", "enableLegacyMetrics")
_LLMD_GATES = ("dataLayer", "flowControl", "enableLegacyMetrics")
# llm-d-router's own sim-e-p-d config set prepareDataPlugins under llm-d.ai/v1alpha1 (its loader
# takes any gate name); kvgate always runs data producers, so that generation accepts it.
_LLMD_V1ALPHA1_GATES = ("dataLayer", "flowControl", "prepareDataPlugins", "enableLegacyMetrics")

GENERATIONS: Mapping[str, Generation] = MappingProxyType(
    {
        GIE: Generation(
            GIE,
            "GIE v1.1-v1.5 (llm-d still loads it)",
            _GIE_FIELDS,
            _V1ALPHA1_DATA_LAYER,
            _GIE_GATES,
            renamed={
                "dataLayer.discovery.endpoints": f"{_FROM_V1} dataLayer.discovery.pluginRef",
                "dataLayer.crossReplica": f"{_FROM_V1} dataLayer.crossReplicaSyncerPluginRef, "
                "crossReplicaSyncInterval, crossReplicaPublishTimeout",
            },
            deprecation=(
                f"apiVersion {GIE} is deprecated (llm-d); use {LLMD_V1} "
                f"({LLMD_V1ALPHA1} is accepted too)"
            ),
        ),
        GIE_DOCS: Generation(
            GIE_DOCS,
            "the group named in GIE's and llm-d's API reference pages",
            _GIE_FIELDS,
            _V1ALPHA1_DATA_LAYER,
            _GIE_GATES,
            renamed={"dataLayer.discovery.endpoints": f"{_FROM_V1} dataLayer.discovery.pluginRef"},
            deprecation=(
                f"apiVersion {GIE_DOCS} appears only in reference docs; GIE's and llm-d's "
                f"loaders register {GIE} and llm-d.ai: use {LLMD_V1}"
            ),
            strict_notes=(
                f"llm-d's router and GIE's EPP reject apiVersion {GIE_DOCS} (their loaders "
                f"register only {GIE}, {LLMD_V1ALPHA1} and {LLMD_V1})",
            ),
        ),
        LLMD_V1ALPHA1: Generation(
            LLMD_V1ALPHA1,
            "llm-d inference-scheduler / router v0.5+",
            (*_COMMON, "dataLayer", "parser", "requestHandler"),
            _V1ALPHA1_DATA_LAYER,
            _LLMD_V1ALPHA1_GATES,
            renamed={
                "data": "renamed to 'dataLayer' (GIE v1.5 and llm-d.ai)",
                "dataLayer.discovery.endpoints": f"{_FROM_V1} dataLayer.discovery.pluginRef",
                "dataLayer.crossReplica": f"{_FROM_V1} dataLayer.crossReplicaSyncerPluginRef, "
                "crossReplicaSyncInterval, crossReplicaPublishTimeout",
            },
            deprecation=(
                f"apiVersion {LLMD_V1ALPHA1} is deprecated (llm-d); use {LLMD_V1}: move "
                "dataLayer.discovery.pluginRef to dataLayer.discovery.endpoints.pluginRef and "
                "dataLayer.crossReplica* to dataLayer.crossReplica.*"
            ),
        ),
        LLMD_V1: Generation(
            LLMD_V1,
            "llm-d router (current)",
            (*_COMMON, "dataLayer", "parser", "requestHandler"),
            _V1_DATA_LAYER,
            _LLMD_GATES,
            renamed={
                "data": "renamed to 'dataLayer' (GIE v1.5 and llm-d.ai)",
                "dataLayer.discovery.pluginRef": f"{_TO_V1} dataLayer.discovery.endpoints.pluginRef",
                "dataLayer.crossReplicaSyncerPluginRef": f"{_TO_V1} "
                "dataLayer.crossReplica.syncerPluginRef",
                "dataLayer.crossReplicaSyncInterval": f"{_TO_V1} dataLayer.crossReplica.syncInterval",
                "dataLayer.crossReplicaPublishTimeout": f"{_TO_V1} "
                "dataLayer.crossReplica.publishTimeout",
            },
            nested_discovery=True,
        ),
    }
)

#: Every feature gate some generation knows (the ``featureGates`` values kvgate acts on).
FEATURE_GATES: tuple[str, ...] = (
    "dataLayer",
    "flowControl",
    "prepareDataPlugins",
    "enableLegacyMetrics",
)

#: A top-level ``parser`` is deprecated in favour of ``requestHandler.parsers`` (llm-d).
PARSER_DEPRECATION = (
    "top-level 'parser' is deprecated (llm-d); use requestHandler.parsers: [{pluginRef: ...}]"
)


def generation(api_version: str) -> Generation | None:
    """The generation for ``api_version``, or None if kvgate does not know it."""
    return GENERATIONS.get(api_version)
