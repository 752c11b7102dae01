"""``probabilistic-admitter``: shed sheddable requests with a probability that rises with load.

* Behaviour (llm-d's): a request whose InferenceObjective priority is ``>= 0`` is always
  admitted, and so is every request when there are no candidates. For a sheddable request
  (priority ``< 0``) the pool's saturation is the mean over the candidates of
  ``max(waiting / queueDepthThreshold, kv_cache_usage / kvCacheUtilThreshold)`` (an endpoint
  never scraped counts 1.0, as llm-d counts one without metrics); the request is refused with
  probability ``min(saturation ** power * k, 1)``. With the defaults nothing is shed below
  saturation 0.1 and everything above about 0.34.
* Answer: as llm-d answers its ``ResourceExhausted``: HTTP 429 (kvgate's OpenAI error
  ``code`` ``admission_rejected``), the message naming the saturation and the probability.
* Where it runs: llm-d's admission step between data preparation and scheduling; kvgate runs
  admitters in its data-preparation step, before any profile, so a refused request is never
  scheduled. It reads endpoint metrics only, no producer's data, so where it falls among the
  producers changes nothing.
* Parameters: ``queueDepthThreshold`` (integer > 0, 5), ``kvCacheUtilThreshold`` (> 0, 0.8),
  ``power`` (> 0, 5.0), ``k`` (> 0, 300.0). Randomness: the context's RNG only.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.errors import PluginParameterError, SchedulingError
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState, Endpoint, RandomSource, Request

TYPE = "probabilistic-admitter"


class ProbabilisticRejected(SchedulingError):
    """The admitter shed the request (llm-d: ``ResourceExhausted``, HTTP 429)."""

    status = 429
    reason = "admission_rejected"
    code = "admission_rejected"


class ProbabilisticAdmitter:
    """A data producer that produces nothing and raises :class:`ProbabilisticRejected`."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        rng: RandomSource,
        *,
        queue_depth_threshold: int = 5,
        kv_cache_util_threshold: float = 0.8,
        power: float = 5.0,
        k: float = 300.0,
    ) -> None:
        self.name = name
        self.rng = rng
        self.queue_depth_threshold = queue_depth_threshold
        self.kv_cache_util_threshold = kv_cache_util_threshold
        self.power = power
        self.k = k
        self.rejected = 0

    def produces(self) -> tuple[DataKey, ...]:
        return ()

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        """Mean per-endpoint load relative to the thresholds (1.0 = at a threshold)."""
        total = 0.0
        for e in endpoints:
            m = e.metrics
            if m.updated_at <= 0.0:
                total += 1.0
                continue
            total += max(
                m.waiting_queue_size / self.queue_depth_threshold,
                m.kv_cache_usage_percent / self.kv_cache_util_threshold,
            )
        return total / len(endpoints)

    def shed_probability(self, saturation: float) -> float:
        return min(float(saturation**self.power) * self.k, 1.0)

    def produce(self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]) -> None:
        if request.objective_priority >= 0 or not endpoints:
            return
        saturation = self.saturation(endpoints)
        probability = self.shed_probability(saturation)
        if self.rng.random() < probability:
            self.rejected += 1
            raise ProbabilisticRejected(
                f"{TYPE}: rejected, saturation={saturation:.3f} prob={probability:.2f}"
            )


def create(name: str, params: Params, ctx: PluginContext) -> ProbabilisticAdmitter:
    queue_depth = params.get_int("queueDepthThreshold", 5, minimum=1)
    values = {}
    for key, default in (("kvCacheUtilThreshold", 0.8), ("power", 5.0), ("k", 300.0)):
        values[key] = params.get_float(key, default)
        if values[key] <= 0:
            raise PluginParameterError(key, f"expected a number > 0, got {values[key]:g}")
    return ProbabilisticAdmitter(
        name,
        ctx.rng,
        queue_depth_threshold=queue_depth,
        kv_cache_util_threshold=values["kvCacheUtilThreshold"],
        power=values["power"],
        k=values["k"],
    )
