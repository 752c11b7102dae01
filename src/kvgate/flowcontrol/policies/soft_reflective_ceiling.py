"""``soft-reflective-ceiling-policy``: per-band dispatch ceilings that tighten with saturation.

Where ``static-usage-limit-policy`` gives every band one ceiling, this one (llm-d-router's
``usagelimits/softreflectiveceiling``) reserves headroom for higher priorities as the pool
fills. For ``N`` bands ranked highest first, band ``i``'s reflective ceiling is
``1 - i · saturation / (N - 1)``:

* the highest band (and a lone band) always gets 1.0: it dispatches until saturation 1.0;
* a band below its reflective ceiling is open (1.0);
* at saturation >= 1.0 every lower band is closed (0.0);
* otherwise the band alternates: open on one call in ``round(saturation / (1 - saturation))``
  and closed on the others, so its dispatch rate falls continuously as saturation rises. All
  alternating bands share one counter, so on a given call they are all open or all closed
  (the controller stops at the first closed band, so the answer must be monotone in rank).

The controller compares each ceiling with the saturation (``saturation >= ceiling`` holds the
band) and stops the dispatch cycle at the first held band, as llm-d's does; requests stay
queued, none is rejected. Not injected by the framework: declare it and name it in
``flowControl.usageLimitPolicyPluginRef``. No parameters. **Difference from llm-d:** llm-d
ranks every band its registry knows (configured ones from the start); kvgate ranks the bands
that have held a request since start-up, so ``N`` counts bands in use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext

TYPE = "soft-reflective-ceiling-policy"

#: Keeps ``1 - saturation`` away from 0 when saturation is a hair below 1.0 (llm-d's guard).
_EPSILON = 1e-9


def create(name: str, params: Params, ctx: PluginContext) -> SoftReflectiveCeiling:
    return SoftReflectiveCeiling(name)


class SoftReflectiveCeiling:
    type_name = TYPE
    strict_notes = (
        "ranks the priority bands that have held a request since start-up; llm-d ranks every "
        "band its registry knows, configured ones from the start",
    )

    def __init__(self, name: str = TYPE) -> None:
        self.name = name
        self.calls = 0  # calls that found some band alternating (the shared duty-cycle counter)

    def compute_limits(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        """One ceiling per band of ``priorities`` (highest first), see the module docstring."""
        n = len(priorities)
        if n <= 1:
            return [1.0] * n
        # The lowest band's ceiling (1 - saturation) is the lowest: some band alternates iff it does.
        open_now = False
        if 1.0 - saturation <= saturation < 1.0:
            # Go's math.Round (half away from zero), not Python's round (half to even)
            period = max(1, math.floor(saturation / (1.0 - saturation + _EPSILON) + 0.5))
            self.calls += 1
            open_now = self.calls % period == 0
        ceilings = [1.0]
        for rank in range(1, n):
            reflective = 1.0 - rank * saturation / (n - 1)
            if saturation < reflective:
                ceilings.append(1.0)
            elif saturation >= 1.0:
                ceilings.append(0.0)
            else:
                ceilings.append(1.0 if open_now else 0.0)
        return ceilings
