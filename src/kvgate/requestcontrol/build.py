"""Assemble :class:`RequestControl` from what a front door was told: one recipe for both.

``kvgate serve`` / ``kvgate up`` and ``kvgate epp`` pass their pool, scheduler and loaded
EndpointPickerConfig; flow control is built when the config's ``flowControl`` feature gate is
on, outlier detection unless switched off, and InferenceObjective priorities come from a file
(``--objectives``) or, in ``kvgate epp`` on Kubernetes, from a watch that fills the same store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgate.endpoints.outlier import OutlierConfig, OutlierDetector
from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.retry import RetryBudget, RetryConfig
from kvgate.requestcontrol.control import RequestControl
from kvgate.requestcontrol.metrics import RequestMetrics
from kvgate.scheduling.scheduler import Scheduler

if TYPE_CHECKING:
    from kvgate.config.model import PickerConfig
    from kvgate.flowcontrol.objectives import ObjectiveStore


def load_objectives(path: Path | str | None) -> ObjectiveStore:
    """The objectives in ``path`` (ConfigError naming file and field), or an empty store."""
    from kvgate.flowcontrol.objectives import ObjectiveStore

    if path is None:
        return ObjectiveStore()
    return ObjectiveStore.from_file(path)


def build_request_control(
    pool: EndpointPool,
    scheduler: Scheduler,
    metrics: RequestMetrics,
    picker_config: PickerConfig | None,
    *,
    objectives: ObjectiveStore | None = None,
    outlier: OutlierConfig | None = None,
    retry: RetryConfig | None = None,
    models_of: Callable[[str], frozenset[str] | set[str] | None] | None = None,
    log_requests: bool = True,
    pool_name: str = "static",
) -> RequestControl:
    """The request path for one front door (see the module docstring)."""
    flow = None
    if picker_config is not None and picker_config.flow_control is not None:
        from kvgate.flowcontrol.build import build_flow_controller

        flow = build_flow_controller(
            picker_config,
            pool.candidates,
            metrics_registry=metrics.registry,
            pool_name=pool_name,
            plugins=scheduler.plugins,  # program-aware-fairness: the scheduler's instance
        )
    outlier_config = outlier if outlier is not None else OutlierConfig()
    detector = (
        OutlierDetector(outlier_config, registry=metrics.registry)
        if outlier_config.enabled
        else None
    )
    budget = RetryBudget(retry, registry=metrics.registry) if retry is not None else None
    handler = picker_config.request_handler if picker_config is not None else None
    common: dict[str, Any] = {
        "models_of": models_of,
        "flow": flow,
        "objectives": objectives,
        "outlier": detector,
        "retry_budget": budget,
        "log_requests": log_requests,
    }
    if handler is not None and handler.passthrough:
        from kvgate.requestcontrol.passthrough import PassthroughRequestControl

        return PassthroughRequestControl(pool, scheduler, metrics, **common)
    if handler is not None and handler.claiming:
        from kvgate.requestcontrol.parsers import ClaimingRequestControl, claiming_parsers

        parsers = claiming_parsers(scheduler.plugins, handler.claiming)
        return ClaimingRequestControl(
            pool, scheduler, metrics, parsers=parsers, openai=handler.openai, **common
        )
    return RequestControl(pool, scheduler, metrics, **common)
