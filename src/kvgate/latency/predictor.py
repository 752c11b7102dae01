"""The latency predictor: two online linear models (TTFT, TPOT) over decision-time features.

:meth:`LatencyPredictor.predict` prices one candidate in a few microseconds (two dot products
written out, no allocation besides the result); :meth:`LatencyPredictor.observe` trains both
models from one completed request, with the features its endpoint had when it was picked.

Invariants:

* predictions are never negative (a linear model extrapolates below 0 on an idle endpoint:
  those are clamped to 0);
* :attr:`LatencyPredictor.ready` is True once the models can be trusted: from the start when
  they begin at a calibrated profile, else after ``min_samples`` observations; consumers fall
  back to their load-based scoring while it is False;
* the TPOT model is trained only with a TPOT observation (streamed responses of 2+ tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.latency.features import EndpointLoad, tpot_features, ttft_features
from kvgate.latency.prior import Prior, zero_prior
from kvgate.latency.rls import RecursiveLeastSquares

__all__ = ["LatencyPredictor"]


class LatencyPredictor:
    """See the module docstring. Not thread-safe: one event loop owns it."""

    __slots__ = ("min_samples", "prior", "tpot", "ttft")

    def __init__(
        self,
        prior: Prior | None = None,
        *,
        forgetting: float = 0.999,
        min_samples: int = 20,
        initial_variance: float = 1e4,
    ) -> None:
        self.prior = prior if prior is not None else zero_prior()
        self.min_samples = min_samples
        self.ttft = RecursiveLeastSquares(
            self.prior.ttft_weights, forgetting=forgetting, initial_variance=initial_variance
        )
        self.tpot = RecursiveLeastSquares(
            self.prior.tpot_weights, forgetting=forgetting, initial_variance=initial_variance
        )

    @property
    def ready(self) -> bool:
        """True when predictions may be used (see the module docstring)."""
        return self.prior.calibrated or self.ttft.num_samples >= self.min_samples

    @property
    def num_samples(self) -> int:
        return self.ttft.num_samples

    def predict(self, load: EndpointLoad) -> tuple[float, float]:
        """``(ttft_ms, tpot_ms)`` for a request on an endpoint in state ``load``."""
        return self.predict_all((load,))[0]

    def predict_all(self, loads: Sequence[EndpointLoad]) -> list[tuple[float, float]]:
        """:meth:`predict` for each of ``loads``, with the weights read once.

        The feature vectors of kvgate.latency.features written out: this runs for every
        candidate of every request, and building the vectors doubled its cost.
        """
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = self.ttft.weights
        v0, v1, v2, v3, v4, v5 = self.tpot.weights
        out: list[tuple[float, float]] = []
        for prompt, cached, infl_requests, infl_tokens, waiting, running, kv in loads:
            new = (prompt - cached) / 1e3 if prompt > cached else 0.0
            infl_tok = infl_tokens / 1e3
            infl_req = infl_requests / 10.0
            wait = waiting / 10.0
            run = running / 10.0
            ttft = (
                w0 + (w1 + w2 * new) * new + w3 * cached / 1e3 + w4 * infl_tok
                + w5 * infl_req + w6 * wait + w7 * run + w8 * kv
            )  # fmt: skip
            tpot = v0 + v1 * (infl_req + 0.1) + v2 * run + v3 * wait + v4 * kv + v5 * infl_tok
            out.append((ttft if ttft > 0.0 else 0.0, tpot if tpot > 0.0 else 0.0))
        return out

    def observe(self, load: EndpointLoad, ttft_ms: float, tpot_ms: float | None) -> None:
        """Train on one completed request: ``load`` as it was when the request was picked."""
        self.ttft.update(ttft_features(load), ttft_ms)
        if tpot_ms is not None:
            self.tpot.update(tpot_features(load), tpot_ms)
