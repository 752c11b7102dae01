"""``by-label``: keep endpoints whose label has one of the allowed values.

* Parameters: ``label`` (string, required), ``validValues`` (list of strings; required unless
  ``allowsNoLabel``), ``allowsNoLabel`` (bool, default false).
* Rule: an endpoint with the label survives iff its value is in ``validValues``; an endpoint
  without the label survives iff ``allowsNoLabel``.
* Inputs: endpoint labels. State: none.

``decode-filter`` and ``prefill-filter`` are fixed instances of this rule on ``llm-d.ai/role``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "by-label"


class ByLabel:
    """Keeps endpoints whose ``label`` is in ``valid_values`` (or missing, if allowed)."""

    def __init__(
        self,
        name: str,
        label: str,
        valid_values: Iterable[str],
        allows_no_label: bool = False,
        type_name: str = TYPE,
    ) -> None:
        self.name = name
        self.type_name = type_name
        self.label = label
        self.valid_values = frozenset(valid_values)
        self.allows_no_label = allows_no_label

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        label, valid, allow_missing = self.label, self.valid_values, self.allows_no_label
        kept: list[Endpoint] = []
        for endpoint in endpoints:
            value = endpoint.labels.get(label)
            if allow_missing if value is None else value in valid:
                kept.append(endpoint)
        return kept


def create(name: str, params: Params, ctx: PluginContext) -> ByLabel:
    label = params.get_str("label", "")
    valid_values = params.get_str_list("validValues")
    allows_no_label = params.get_bool("allowsNoLabel", False)
    if not label:
        raise PluginParameterError("label", "expected a non-empty label name")
    if not valid_values and not allows_no_label:
        raise PluginParameterError(
            "validValues", "expected at least one value (or allowsNoLabel: true)"
        )
    return ByLabel(name, label, valid_values, allows_no_label)
