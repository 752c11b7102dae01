"""Latency prediction for routing: features, an online linear model, priors, SLO headers.

No I/O and no plugin code: :mod:`kvgate.plugins.producers.predicted_latency_producer`
trains and queries a :class:`LatencyPredictor`; docs/latency.md describes the model.
"""

from kvgate.latency.features import EndpointLoad
from kvgate.latency.info import LATENCY_PREDICTION_INFO, LatencyPredictionInfo
from kvgate.latency.predictor import LatencyPredictor
from kvgate.latency.prior import Prior, load_prior, zero_prior
from kvgate.latency.rls import RecursiveLeastSquares
from kvgate.latency.slo import HEADER_SLO_TPOT_MS, HEADER_SLO_TTFT_MS, LatencySLO, parse_slo

__all__ = [
    "HEADER_SLO_TPOT_MS",
    "HEADER_SLO_TTFT_MS",
    "LATENCY_PREDICTION_INFO",
    "EndpointLoad",
    "LatencyPredictionInfo",
    "LatencyPredictor",
    "LatencySLO",
    "Prior",
    "RecursiveLeastSquares",
    "load_prior",
    "parse_slo",
    "zero_prior",
]
