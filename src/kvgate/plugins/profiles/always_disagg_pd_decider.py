"""``always-disagg-pd-decider`` (llm-d): every request gets a separate prefill.

* Parameters: none.
* Decision: True for every request, whatever its length or cache state (llm-d's P/D guide
  uses it so that each request exercises the two-leg path).
* State: none.
"""

from __future__ import annotations

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import Endpoint, Request

TYPE = "always-disagg-pd-decider"


class AlwaysDisaggPdDecider:
    """A :class:`~kvgate.plugins.profiles.deciders.Decider` that always disaggregates."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def disaggregate(self, request: Request, decode: Endpoint | None) -> bool:
        return True


def create(name: str, params: Params, ctx: PluginContext) -> AlwaysDisaggPdDecider:
    return AlwaysDisaggPdDecider(name)
