"""``test-profile-handler`` (llm-d's config-loader test double): runs no profile.

* Parameters: none.
* Rule: picks no profile to run, then fails the cycle (llm-d's double returns a sentinel
  error from ProcessResults), so every request is refused with 429 ``scheduling_failed``.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvgate.errors import SchedulingFailedError
from kvgate.plugins.base import Params, PluginContext, SchedulerProfileView
from kvgate.plugins.testdoubles import STRICT_NOTES
from kvgate.scheduling.types import CycleState, ProfileRunResult, Request, SchedulingResult

TYPE = "test-profile-handler"


class NullProfileHandler:
    """Chooses no profile; every cycle fails."""

    type_name = TYPE
    strict_notes = STRICT_NOTES

    def __init__(self, name: str) -> None:
        self.name = name

    def pick_profiles(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfileView]:
        return {}

    def process_results(
        self,
        state: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        raise SchedulingFailedError(
            f"profile handler {self.name!r} is llm-d's test double {TYPE!r}: it runs no "
            "profile and picks no endpoint"
        )


def create(name: str, params: Params, ctx: PluginContext) -> NullProfileHandler:
    return NullProfileHandler(name)
