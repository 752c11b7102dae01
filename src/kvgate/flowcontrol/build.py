"""Build a :class:`FlowController` (and its detector) from a resolved :class:`PickerConfig`.

The detector is, in order: ``flowControl.saturationDetector.pluginRef``, the top-level
``saturationDetector.pluginRef``, else GIE v1.3's :class:`ThresholdDetector` from the top-level
thresholds (which the SD_* variables override). A reference names a declared plugin (built with
its parameters) or a detector type (built with defaults, as llm-d injects it). The usage limit
comes from ``flowControl.usageLimitPolicyPluginRef`` the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import prometheus_client

from kvgate.config.model import PickerConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.policies.static_usage_limit import StaticUsageLimit
from kvgate.flowcontrol.saturation import SaturationDetector, ThresholdDetector
from kvgate.plugins.base import PluginContext
from kvgate.plugins.registry import Registry, default_registry
from kvgate.scheduling.types import Endpoint


def build_plugin(config: PickerConfig, ref: str, registry: Registry, ctx: PluginContext) -> Any:
    """The plugin ``ref`` names: a declared one with its parameters, else its type's default."""
    for spec in config.plugins:
        if spec.name == ref:
            return registry.create(spec.canonical_type, spec.name, spec.parameters, ctx)
    return registry.create(ref, ref, None, ctx)


def build_detector(
    config: PickerConfig, *, registry: Registry | None = None, ctx: PluginContext | None = None
) -> SaturationDetector:
    """The saturation detector ``config`` selects (see the module docstring)."""
    reg = registry if registry is not None else default_registry()
    context = ctx if ctx is not None else PluginContext()
    fc = config.flow_control
    ref = (fc.saturation_detector_ref if fc is not None else None) or (
        config.saturation_detector.plugin_ref
    )
    if ref is not None:
        detector = build_plugin(config, ref, reg, context)
        assert isinstance(detector, SaturationDetector)
        return detector
    sd = config.saturation_detector
    return ThresholdDetector(
        sd.queue_depth_threshold, sd.kv_cache_util_threshold, sd.metrics_staleness_threshold_s
    )


def build_flow_controller(
    config: PickerConfig,
    candidates: Callable[[], Sequence[Endpoint]],
    *,
    detector: SaturationDetector | None = None,
    metrics_registry: prometheus_client.CollectorRegistry | None = None,
    registry: Registry | None = None,
    pool_name: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> FlowController | None:
    """A controller for ``config``, or None when the ``flowControl`` gate is off."""
    fc = config.flow_control
    if fc is None:
        return None
    reg = registry if registry is not None else default_registry()
    ctx = PluginContext()
    usage = build_plugin(config, fc.usage_limit_policy_ref, reg, ctx)
    assert isinstance(usage, StaticUsageLimit)
    return FlowController(
        fc,
        detector if detector is not None else build_detector(config, registry=reg, ctx=ctx),
        candidates,
        registry=metrics_registry,
        clock=clock,
        usage_limit=usage.threshold,
        pool_name=pool_name,
    )
