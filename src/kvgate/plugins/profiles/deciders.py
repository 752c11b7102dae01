"""The decider extension point of ``disagg-profile-handler`` (llm-d's ``deciderPlugin``).

A decider answers one question per request: should a separate stage (prefill for a P/D
decider, encode for an encode decider) run for this request on top of the decode endpoint
picked first? ``decode`` is None when no decode pick exists yet (the encode decider in
``prefill-first`` stage order, as llm-d passes nil there). Deciders are plain plugins named by the handler's ``deciders.prefill`` /
``deciders.encode`` parameters; the handler resolves the names once every plugin is built
(:meth:`DisaggProfileHandler.check_references`), so a decider may be declared after it.

Invariant: ``disaggregate`` is pure with respect to the request (reads the producers' data,
writes nothing) and never raises; on missing inputs it answers False (decode only), as
llm-d's deciders do.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kvgate.plugins.base import Plugin
from kvgate.scheduling.types import Endpoint, Request


@runtime_checkable
class Decider(Plugin, Protocol):
    """Decides per request whether a disaggregated stage runs beside ``decode``."""

    def disaggregate(self, request: Request, decode: Endpoint | None) -> bool: ...
