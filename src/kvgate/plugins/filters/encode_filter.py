"""``encode-filter``: keep endpoints whose ``llm-d.ai/role`` is an encode role.

A pure label filter, so it acts without multimodal support: it keeps endpoints labelled
``encode``, ``encode-prefill`` or ``encode-prefill-decode``; unlabelled endpoints are dropped
(as ``prefill-filter`` drops them). Parameters: none. Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import ROLE_LABEL, CycleState, Endpoint, Request

TYPE = "encode-filter"

#: Roles that run the encode stage (llm-d bylabel/roles.go).
ENCODE_ROLES = frozenset({"encode", "encode-prefill", "encode-prefill-decode"})


class EncodeFilter:
    """Keeps endpoints labelled with an encode role."""

    type_name = TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        return [e for e in endpoints if e.labels.get(ROLE_LABEL) in ENCODE_ROLES]


def create(name: str, params: Params, ctx: PluginContext) -> EncodeFilter:
    return EncodeFilter(name)
