"""Flow control: priority bands, fairness and queueing in front of the scheduler.

Transport-free: the request-control layer awaits :meth:`FlowController.admit` before it
schedules a request and reports :meth:`~FlowController.dispatched` /
:meth:`~FlowController.completed`. See docs/flow-control.md.
"""

from kvgate.errors import FlowRejected
from kvgate.flowcontrol.config import FlowControlConfig, PriorityBandConfig
from kvgate.flowcontrol.controller import FlowController, FlowItem
from kvgate.flowcontrol.saturation import DispatchTracker, SaturationDetector, ThresholdDetector

__all__ = [
    "DispatchTracker",
    "FlowControlConfig",
    "FlowController",
    "FlowItem",
    "FlowRejected",
    "PriorityBandConfig",
    "SaturationDetector",
    "ThresholdDetector",
]
