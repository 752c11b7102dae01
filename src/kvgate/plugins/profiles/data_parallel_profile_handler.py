"""``data-parallel-profile-handler`` (deprecated in llm-d): one profile, then a port rewrite.

For vLLM data-parallel pods behind one service port: runs the single configured profile, then
sends the request to the picked pod's ``primaryPort`` and names the rank it chose in the
``x-data-parallel-host-port`` request header (``<address>:<picked port>``), for llm-d's
routing sidecar on the pod.

* Parameters: ``primaryPort`` (int 1-65535, default 8000; 0 leaves the port alone).
* Requires exactly one scheduling profile (more fail at ``process_results``, as in llm-d).
* The rewritten target is a new :class:`Endpoint` with the same name, labels and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext, SchedulerProfileView
from kvgate.scheduling.types import (
    HEADER_DATA_PARALLEL,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)

TYPE = "data-parallel-profile-handler"

_ORIGINAL = "kvgate.data-parallel.original"  # Request.extra: the picked rank's host:port


class DataParallelProfileHandler:
    """ProfileHandler + PreRequest (sets the data-parallel header)."""

    type_name = TYPE

    def __init__(self, name: str, primary_port: int) -> None:
        self.name = name
        self.primary_port = primary_port

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
            raise LookupError(
                f"{TYPE} runs exactly one profile, got {len(results)}: {', '.join(results)}"
            )
        ((profile, result),) = results.items()
        if result is None or not result.targets or not self.primary_port:
            return SchedulingResult(dict(results), profile)
        target = result.targets[0]
        request.extra[_ORIGINAL] = target.hostport
        moved = Endpoint(
            target.name,
            target.address,
            self.primary_port,
            target.labels,
            target.metrics,
            target.scheme,
        )
        rewritten = ProfileRunResult((moved, *result.targets[1:]), result.scored)
        return SchedulingResult({profile: rewritten}, profile)

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        original = request.extra.get(_ORIGINAL)
        if isinstance(original, str):
            headers[HEADER_DATA_PARALLEL] = original


def create(name: str, params: Params, ctx: PluginContext) -> DataParallelProfileHandler:
    port = params.get_int("primaryPort", 8000, minimum=0)
    if port > 65535:
        raise PluginParameterError("primaryPort", f"expected a port in 1-65535, got {port}")
    return DataParallelProfileHandler(name, port)
