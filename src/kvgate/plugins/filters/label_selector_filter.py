"""``label-selector-filter`` (``by-label-selector`` before llm-d v0.9): keep endpoints matched
by a Kubernetes label selector.

* Parameters: a ``metav1.LabelSelector``: ``matchLabels`` (map of string to string) and
  ``matchExpressions`` (list of ``{key, operator, values}``; operator ``In`` / ``NotIn`` need
  at least one value, ``Exists`` / ``DoesNotExist`` none). All requirements must hold; an
  empty selector keeps every endpoint.
* Semantics as in Kubernetes: ``NotIn`` also matches endpoints without the key.
* Inputs: endpoint labels. State: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvgate.errors import PluginParameterError
from kvgate.plugins.base import Params, PluginContext
from kvgate.scheduling.types import CycleState, Endpoint, Request

TYPE = "label-selector-filter"
ALIASES = ("by-label-selector",)  # deprecated in llm-d v0.9.0, still accepted

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # one of OPERATORS
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None  # DoesNotExist


class ByLabelSelector:
    """Keeps endpoints whose labels satisfy every requirement."""

    type_name = TYPE

    def __init__(self, name: str, requirements: Sequence[Requirement]) -> None:
        self.name = name
        self.requirements = tuple(requirements)

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        reqs = self.requirements
        return [e for e in endpoints if all(r.matches(e.labels) for r in reqs)]


def _requirements(params: Params) -> list[Requirement]:
    out: list[Requirement] = []
    for label, wanted in params.get_mapping("matchLabels").items():
        if not isinstance(wanted, str):
            raise PluginParameterError(f"matchLabels.{label}", "expected a string value")
        out.append(Requirement(str(label), "In", frozenset((wanted,))))
    expressions = params.get_any("matchExpressions")
    if expressions is None:
        return out
    if not isinstance(expressions, list):
        raise PluginParameterError("matchExpressions", "expected a list")
    for i, expr in enumerate(expressions):
        where = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise PluginParameterError(where, "expected a mapping with key, operator, values")
        unknown = sorted(set(expr) - {"key", "operator", "values"})
        if unknown:
            raise PluginParameterError(f"{where}.{unknown[0]}", "unknown field")
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if not isinstance(key, str) or not key:
            raise PluginParameterError(f"{where}.key", "expected a non-empty string")
        if operator not in OPERATORS:
            raise PluginParameterError(
                f"{where}.operator", f"expected one of {', '.join(OPERATORS)}, got {operator!r}"
            )
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PluginParameterError(f"{where}.values", "expected a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise PluginParameterError(f"{where}.values", f"operator {operator} needs values")
        if operator in ("Exists", "DoesNotExist") and values:
            raise PluginParameterError(f"{where}.values", f"operator {operator} takes no values")
        out.append(Requirement(key, operator, frozenset(values)))
    return out


def create(name: str, params: Params, ctx: PluginContext) -> ByLabelSelector:
    return ByLabelSelector(name, _requirements(params))
