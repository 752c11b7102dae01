"""Build a :class:`FlowController` (and its detector) from a resolved :class:`PickerConfig`.

The detector is, in order: ``flowControl.saturationDetector.pluginRef``, the top-level
``saturationDetector.pluginRef``, else GIE v1.3's :class:`ThresholdDetector` from the top-level
thresholds (which the SD_* variables override). A reference names a declared plugin (built with
its parameters) or a detector type (built with defaults, as llm-d injects it). The usage limit
comes from ``flowControl.usageLimitPolicyPluginRef`` the same way: one ceiling for every band
(``static-usage-limit-policy``) or one per band (``soft-reflective-ceiling-policy``). A band
whose fairness policy has request hooks (``program-aware-fairness``) uses the scheduler's
instance of the declared plugin, so what its hooks learn is what it schedules by.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import prometheus_client

from kvgate.config.model import PickerConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.policies.program_aware import TYPE as PROGRAM_AWARE
from kvgate.flowcontrol.policies.program_aware import ProgramAwareFairness
from kvgate.flowcontrol.policies.soft_reflective_ceiling import SoftReflectiveCeiling
from kvgate.flowcontrol.policies.static_usage_limit import StaticUsageLimit
from kvgate.flowcontrol.queues import FairnessPolicy
from kvgate.flowcontrol.saturation import SaturationDetector, ThresholdDetector
from kvgate.plugins.base import Plugin, PluginContext
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
    plugins: Sequence[Plugin] = (),
) -> FlowController | None:
    """A controller for ``config``, or None when the ``flowControl`` gate is off.

    ``plugins`` are the scheduler's built plugins: a fairness policy with request hooks is
    taken from them (built afresh when absent, e.g. in ``kvgate config check``).
    """
    fc = config.flow_control
    if fc is None:
        return None
    reg = registry if registry is not None else default_registry()
    ctx = PluginContext()
    usage = build_plugin(config, fc.usage_limit_policy_ref, reg, ctx)
    assert isinstance(usage, StaticUsageLimit | SoftReflectiveCeiling)
    fairness: dict[str, FairnessPolicy] = {}
    bands = (fc.default_priority_band, fc.default_negative_priority_band, *fc.priority_bands)
    if any(band is not None and band.fairness_policy == PROGRAM_AWARE for band in bands):
        shared = next((p for p in plugins if isinstance(p, ProgramAwareFairness)), None)
        if shared is None:
            shared = build_plugin(config, _declared_name(config, PROGRAM_AWARE), reg, ctx)
        assert isinstance(shared, ProgramAwareFairness)
        fairness[PROGRAM_AWARE] = shared
    return FlowController(
        fc,
        detector if detector is not None else build_detector(config, registry=reg, ctx=ctx),
        candidates,
        registry=metrics_registry,
        clock=clock,
        usage_limit=usage.threshold if isinstance(usage, StaticUsageLimit) else 1.0,
        band_limits=usage.compute_limits if isinstance(usage, SoftReflectiveCeiling) else None,
        fairness=fairness,
        pool_name=pool_name,
    )


def _declared_name(config: PickerConfig, type_name: str) -> str:
    """The name of the first declared plugin of ``type_name`` (config checks one exists)."""
    return next((s.name for s in config.plugins if s.canonical_type == type_name), type_name)
