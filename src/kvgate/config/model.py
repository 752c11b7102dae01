"""The resolved scheduler configuration: what :func:`kvgate.config.load_picker_config` returns.

A :class:`PickerConfig` is llm-d's EndpointPickerConfig after validation *and* defaulting:
every profile names exactly one picker, exactly one profile handler is set, and plugins added
by the defaulting rules are listed with ``added_by_default=True``. It holds no plugin
objects; :func:`kvgate.config.build_scheduler` builds fresh ones from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvgate.config.datalayer import DataLayerConfig, RequestHandlerConfig
    from kvgate.flowcontrol.config import FlowControlConfig

#: Role names, in the order ``kvgate config check`` prints them.
ROLE_NAMES: tuple[str, ...] = (
    "filter",
    "scorer",
    "picker",
    "profile-handler",
    "request-header",
    "pre-request",
    "response-complete",
    "endpoint-listener",
    "lifecycle",
    "data-source",
    "data-extractor",
    "parser",
)


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One entry of ``plugins[]``, with the roles its built object has."""

    name: str
    type: str  # as written in the file (may be an alias such as kv-cache-scorer)
    canonical_type: str  # the registered type the alias resolves to
    parameters: Mapping[str, Any] = field(default_factory=dict)  # as written
    roles: frozenset[str] = frozenset()  # subset of ROLE_NAMES
    effective_parameters: Mapping[str, Any] = field(default_factory=dict)  # incl. defaults
    added_by_default: bool = False  # created by llm-d's defaulting rules


@dataclass(frozen=True, slots=True)
class WeightedRef:
    """A scorer in a profile and its weight (int or float as written; 1 when unset)."""

    name: str
    weight: int | float = 1


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A scheduling profile: filters in order, weighted scorers in order, one picker."""

    name: str
    filters: tuple[str, ...]
    scorers: tuple[WeightedRef, ...]
    picker: str
    added_by_default: bool = False  # the ``default`` profile made because none was declared
    picker_added_by_default: bool = False  # the picker was filled in by the defaulting rules


@dataclass(frozen=True, slots=True)
class SaturationDetectorConfig:
    """llm-d's saturation detector thresholds, after defaults and SD_* environment overrides."""

    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    metrics_staleness_threshold_s: float = 0.2
    plugin_ref: str | None = None  # newer shape: a declared detector plugin (or its type)


@dataclass(frozen=True, slots=True)
class PickerConfig:
    """A validated, defaulted EndpointPickerConfig."""

    source: str  # the file (or description) it came from, for messages
    api_version: str
    plugins: tuple[PluginSpec, ...]
    profiles: tuple[ProfileSpec, ...]
    handler: str  # name of the one ProfileHandler plugin
    feature_gates: frozenset[str] = frozenset()
    saturation_detector: SaturationDetectorConfig = field(default_factory=SaturationDetectorConfig)
    #: the data layer's scraper settings (None only before loading; see kvgate.config.datalayer)
    data_layer: DataLayerConfig | None = None
    flow_control: FlowControlConfig | None = None  # set only with the flowControl gate
    request_handler: RequestHandlerConfig | None = None  # the parsers named by the file
    text: str = ""  # the original text
    #: one line each: llm-d's deprecation notices for this file (printed as warnings)
    warnings: tuple[str, ...] = ()

    def plugin(self, name: str) -> PluginSpec:
        """The plugin called ``name``; KeyError if there is none."""
        for spec in self.plugins:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def profile(self, name: str) -> ProfileSpec:
        for spec in self.profiles:
            if spec.name == name:
                return spec
        raise KeyError(name)
