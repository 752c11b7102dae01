"""Per-request latency SLOs from llm-d's headers: ``x-slo-ttft-ms`` and ``x-slo-tpot-ms``.

As llm-d's predicted-latency producer reads them: a header that is absent or not a number
counts as 0, which means "no SLO" (the headroom against 0 is minus the prediction, so
requests without SLOs go to the lowest predicted latency). Values are milliseconds; negative
ones count as 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["HEADER_SLO_TPOT_MS", "HEADER_SLO_TTFT_MS", "LatencySLO", "parse_slo"]

HEADER_SLO_TTFT_MS = "x-slo-ttft-ms"
HEADER_SLO_TPOT_MS = "x-slo-tpot-ms"

log = logging.getLogger("kvgate.latency.slo")


@dataclass(frozen=True, slots=True)
class LatencySLO:
    """A request's SLOs in ms; 0 means none was given."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0

    @property
    def any(self) -> bool:
        return self.ttft_ms > 0.0 or self.tpot_ms > 0.0


NO_SLO = LatencySLO()


def _value(headers: Mapping[str, str], name: str) -> float:
    raw = headers.get(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log.debug("%s: expected a number of milliseconds, got %r; no SLO", name, raw)
        return 0.0
    return value if math.isfinite(value) and value > 0.0 else 0.0


def parse_slo(headers: Mapping[str, str]) -> LatencySLO:
    """The SLOs in ``headers`` (lower-cased names, as :class:`Request` holds them)."""
    ttft = _value(headers, HEADER_SLO_TTFT_MS)
    tpot = _value(headers, HEADER_SLO_TPOT_MS)
    if ttft == 0.0 and tpot == 0.0:
        return NO_SLO
    return LatencySLO(ttft, tpot)
