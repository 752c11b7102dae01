"""llm-d's request-handling plugins (``requestHandler.parsers``): one Protocol, ``RequestParser``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kvgate.plugins.base import Plugin


@runtime_checkable
class RequestParser(Plugin, Protocol):
    """A request parser; ``parses`` names the API family kvgate's front doors parse for it."""

    @property
    def parses(self) -> str: ...
