"""Recursive least squares with exponential forgetting: an online linear model in O(d²).

``y ≈ w · x``. Each :meth:`RecursiveLeastSquares.update` folds one observation into ``w`` and
the inverse-covariance estimate ``P`` (d × d), so memory is bounded by the dimension, not by
the number of samples, and the forgetting factor ``λ`` (0 < λ <= 1) weighs a sample ``k``
updates old by ``λ**k``: the model follows a workload that changes, with an effective memory
of about ``1 / (1 - λ)`` samples.

Invariants: ``P`` stays symmetric (updated in its symmetric form) and its trace stays at or
below ``max_trace``: without it, ``P`` grows as ``λ**-n`` along directions the data never
excites (a feature that is always 0) until it overflows ("covariance wind-up"); the cap
rescales ``P`` whole, which keeps the estimate and only slows adaptation along those
directions. With ``λ = 1`` and a large initial ``P`` it is ordinary least squares: a noise-free
linear target is recovered exactly after ``d`` independent samples.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RecursiveLeastSquares"]


class RecursiveLeastSquares:
    """One online linear model; see the module docstring."""

    __slots__ = ("dim", "forgetting", "max_trace", "num_samples", "p", "weights")

    def __init__(
        self,
        initial_weights: Sequence[float],
        *,
        forgetting: float = 0.999,
        initial_variance: float = 1e4,
        max_trace: float = 1e8,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting: expected 0 < λ <= 1, got {forgetting}")
        if initial_variance <= 0.0:
            raise ValueError(f"initial_variance: expected > 0, got {initial_variance}")
        self.dim = len(initial_weights)
        self.weights: list[float] = [float(w) for w in initial_weights]
        self.forgetting = forgetting
        self.max_trace = max_trace
        self.num_samples = 0  # observations folded in since construction
        d = self.dim
        self.p: list[list[float]] = [
            [initial_variance if i == j else 0.0 for j in range(d)] for i in range(d)
        ]

    def predict(self, x: Sequence[float]) -> float:
        """``w · x`` (no clamping: callers decide what a negative prediction means)."""
        return sum(w * v for w, v in zip(self.weights, x, strict=True))

    def update(self, x: Sequence[float], y: float) -> None:
        """Fold in one observation ``(x, y)``."""
        d = self.dim
        if len(x) != d:
            raise ValueError(f"expected {d} features, got {len(x)}")
        p = self.p
        lam = self.forgetting
        px = [sum(row[j] * x[j] for j in range(d)) for row in p]  # P x
        denom = lam + sum(x[i] * px[i] for i in range(d))  # λ + xᵀ P x  (> 0: P is PSD)
        gain = [v / denom for v in px]
        error = y - sum(w * v for w, v in zip(self.weights, x, strict=True))
        for i in range(d):
            self.weights[i] += gain[i] * error
        # P <- (P - g (P x)ᵀ) / λ, written symmetrically so rounding cannot skew it
        inv_lam = 1.0 / lam
        trace = 0.0
        for i in range(d):
            row = p[i]
            gi = gain[i]
            for j in range(i, d):
                value = (row[j] - gi * px[j]) * inv_lam
                row[j] = value
                p[j][i] = value
            trace += row[i]
        if trace > self.max_trace:
            scale = self.max_trace / trace
            for row in p:
                for j in range(d):
                    row[j] *= scale
        self.num_samples += 1
