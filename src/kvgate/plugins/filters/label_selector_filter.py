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

import re
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


_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")


def parse_selector(text: str) -> list[Requirement]:
    """A Kubernetes label selector string (``labels.Parse``'s syntax: ``a=b``, ``a==b``,
    ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``, comma-joined) as requirements;
    ValueError names the term it cannot read (``>``/``<`` are not supported)."""
    terms: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    out: list[Requirement] = []
    for term in terms:
        if m := _EQUALITY.fullmatch(term):
            operator = "NotIn" if m.group(2) == "!=" else "In"
            out.append(Requirement(m.group(1), operator, frozenset((m.group(3),))))
        elif m := _SET.fullmatch(term):
            values = frozenset(v.strip() for v in m.group(3).split(","))
            if not all(re.fullmatch(_VALUE, v) for v in values):
                raise ValueError(f"{term.strip()!r}: a value is not a valid label value")
            operator = "In" if m.group(2) == "in" else "NotIn"
            out.append(Requirement(m.group(1), operator, values))
        elif m := _EXISTS.fullmatch(term):
            out.append(
                Requirement(m.group(2), "DoesNotExist" if m.group(1) else "Exists", frozenset())
            )
        else:
            raise ValueError(f"cannot read {term.strip()!r} as a label requirement")
    return out


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
