"""Min-max scoring shared by queue-scorer and running-requests-size-scorer."""

from __future__ import annotations

from collections.abc import Sequence


def inverse_min_max(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """``(max − v) / (max − min)`` per endpoint: the lowest value scores 1, the highest 0.

    All values equal → every endpoint scores 1.
    """
    if not values:
        return {}
    low, high = min(values), max(values)
    if high == low:
        return dict.fromkeys(names, 1.0)
    span = high - low
    return {n: (high - v) / span for n, v in zip(names, values, strict=True)}
