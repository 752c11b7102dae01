"""Strict field checking shared by the config loaders: a problem collector and typed getters.

Each getter reports a :class:`~kvgate.errors.Problem` naming the field path and what was
expected, and returns a harmless value so that checking goes on and every mistake is found.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from kvgate.config.documents import describe
from kvgate.errors import Problem

#: Finds the (line, column) of a field path in the document, if it can.
Locator = Callable[[str], "tuple[int, int] | None"]


class Problems:
    """Collects problems for one document; ``prefix`` is prepended to every field path.

    ``locate`` (given the path without the prefix) adds the line and column of the field.
    """

    def __init__(self, source: str, prefix: str = "", locate: Locator | None = None) -> None:
        self.source = source
        self.prefix = prefix
        self.locate = locate
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        full = f"{self.prefix}.{path}" if self.prefix and path else (self.prefix or path)
        where = self.locate(path) if self.locate is not None else None
        line, column = where if where is not None else (None, None)
        self.items.append(Problem(self.source, full, message, line, column))


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_fields(
    problems: Problems, path: str, mapping: Mapping[Any, Any], known: tuple[str, ...]
) -> None:
    for key in mapping:
        if key in known:
            continue
        where = join_path(path, str(key))
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.add(where, f"unknown field{hint} (known: {', '.join(known)})")


def as_list(problems: Problems, path: str, value: Any) -> list[Any]:
    """``value`` as a list; null/absent is empty; anything else is a problem."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"expected a list, got {describe(value)}")
        return []
    return value


def as_mapping(problems: Problems, path: str, value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {describe(value)}")
        return None
    return value


def optional_mapping(problems: Problems, path: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return as_mapping(problems, path, value)


def required_str(problems: Problems, path: str, entry: Mapping[str, Any], key: str) -> str | None:
    if key not in entry or entry[key] is None:
        problems.add(join_path(path, key), "required field is missing; expected a string")
        return None
    value = entry[key]
    if not isinstance(value, str) or not value:
        problems.add(join_path(path, key), f"expected a non-empty string, got {describe(value)}")
        return None
    return value
