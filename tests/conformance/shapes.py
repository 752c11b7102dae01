"""JSON shapes: what a response looks like with the values taken out."""

from __future__ import annotations

from typing import Any


def shape(value: Any) -> Any:
    """Keys, nesting and value types of ``value`` (lists by the shape of their first item)."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def differences(real: Any, sim: Any, path: str = "$") -> list[str]:
    """Where ``sim``'s shape departs from ``real``'s, one line each (empty when the same).

    Key order is ignored; an empty list matches a list of anything (no items to compare).
    """
    out: list[str] = []
    if isinstance(real, dict) and isinstance(sim, dict):
        for key in real:
            if key not in sim:
                out.append(f"{path}.{key}: missing in sim (vLLM has {_brief(real[key])})")
            else:
                out.extend(differences(real[key], sim[key], f"{path}.{key}"))
        out.extend(
            f"{path}.{key}: only in sim ({_brief(sim[key])})" for key in sim if key not in real
        )
        return out
    if isinstance(real, list) and isinstance(sim, list):
        if real and sim:
            out.extend(differences(real[0], sim[0], f"{path}[0]"))
        return out
    if real != sim:
        out.append(f"{path}: vLLM {_brief(real)}, sim {_brief(sim)}")
    return out


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."
