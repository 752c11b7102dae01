"""``LatencyPredictionInfo``: what the predicted-latency producer publishes per endpoint.

llm-d's endpoint attribute of the same name (data type ``LatencyPredictionInfoKey``): the
predictions, the request's headroom against its SLOs (``SLO - predicted``; positive = meets
it) and whether each SLO is met. Published as ``{endpoint name: LatencyPredictionInfo}`` under
``LatencyPredictionInfoKey/<producer name>`` on :attr:`Request.produced`; absent while the
predictor is not ready (consumers then fall back to load-based decisions).
"""

from __future__ import annotations

from typing import NamedTuple

from kvgate.latency.features import EndpointLoad

__all__ = ["LATENCY_PREDICTION_INFO", "LatencyPredictionInfo"]

#: llm-d's data type name for the per-endpoint predictions.
LATENCY_PREDICTION_INFO = "LatencyPredictionInfoKey"


class LatencyPredictionInfo(NamedTuple):
    """One candidate's predictions for one request (ms); a NamedTuple for the cost of
    building one per candidate per request (see EndpointLoad)."""

    ttft_ms: float
    tpot_ms: float
    ttft_headroom_ms: float  # SLO - predicted (SLO 0 when none was given)
    tpot_headroom_ms: float  # 0 when TPOT is neutralized (non-streaming, prefill endpoints)
    ttft_valid: bool
    tpot_valid: bool
    dispatched_requests: int  # requests kvgate has in flight on the endpoint
    load: EndpointLoad  # the features the prediction was made from (training input)

    @property
    def valid(self) -> bool:
        """Both SLOs are met."""
        return self.ttft_valid and self.tpot_valid
