"""``single-profile-handler``: run every profile once; the one result is primary.

llm-d's default handler (added automatically when a config has one profile and no handler).

* Parameters: none.
* PickProfiles: returns every profile on the first round, nothing afterwards.
* ProcessResults: exactly one profile must have run; its result is primary. A failed profile
  (no survivor, no pick) raises ``SchedulingFailedError`` (HTTP 429, as llm-d).
* State: none.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvgate.errors import SchedulingFailedError
from kvgate.plugins.base import Params, PluginContext, SchedulerProfileView
from kvgate.scheduling.types import CycleState, ProfileRunResult, Request, SchedulingResult

TYPE = "single-profile-handler"


class SingleProfileHandler:
    """Runs all profiles in one round; requires exactly one and makes it primary."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def pick_profiles(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfileView]:
        return {} if results else profiles

    def process_results(
        self,
        state: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        if len(results) != 1:
            raise SchedulingFailedError(
                f"single-profile-handler expects exactly one scheduling profile, got {len(results)}"
            )
        (profile_name, result), *_ = results.items()
        if result is None:
            raise SchedulingFailedError(f"scheduling profile {profile_name!r} found no endpoint")
        return SchedulingResult(dict(results), profile_name)


def create(name: str, params: Params, ctx: PluginContext) -> SingleProfileHandler:
    return SingleProfileHandler(name)
