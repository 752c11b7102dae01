"""The extension points of the scheduler, one ``Protocol`` each.

A plugin is any object with ``type_name`` and ``name``; its roles come from the methods it
has, as in llm-d (one object may be a Scorer and a PreRequest hook at once). The framework
(kvgate.scheduling.scheduler), not the plugins, enforces the invariants: scores are clamped
to [0, 1], a profile has exactly one picker, total = Σ weight · clamp(score).

To add a plugin, write one file under ``kvgate/plugins/<role>s/<type-name>.py`` with:

1. ``TYPE = "my-scorer"``: the llm-d type name;
2. a factory ``def create(name: str, params: Params, ctx: PluginContext) -> MyScorer`` that
   validates its own parameters with the ``Params`` helpers (errors name the field);
3. the class, implementing the protocol methods of its roles;

then add the module to ``BUILTIN_MODULES`` in kvgate.plugins.registry.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import (
    Clock,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    ResponseInfo,
    SchedulingResult,
    ScoredEndpoint,
)


@runtime_checkable
class Plugin(Protocol):
    """Anything the registry can build."""

    @property
    def type_name(self) -> str: ...

    @property
    def name(self) -> str: ...


@runtime_checkable
class Producer(Plugin, Protocol):
    """llm-d's DataProducer: computes per-request data before any profile runs.

    The framework runs every configured producer once per request, in dependency order (a
    producer that consumes another's data runs after it), before the profile handler's first
    round; ``produce`` writes the keys ``produces`` names with
    :func:`kvgate.scheduling.data.put`. Consumers find them by :class:`DataKey`.
    """

    def produces(self) -> tuple[DataKey, ...]: ...

    def produce(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> None: ...


@runtime_checkable
class Consumer(Plugin, Protocol):
    """A plugin that needs data from producers (by key, i.e. by producer name).

    Every key ``consumes`` returns must be produced by a configured plugin; when it is the
    data type's default key and nothing produces it, the config builder adds the default
    producer (as llm-d does), otherwise the configuration is rejected naming both plugins.
    """

    def consumes(self) -> tuple[DataKey, ...]: ...


@runtime_checkable
class OptionalConsumer(Plugin, Protocol):
    """A producer that reads another's data when it is configured (llm-d's optional data
    dependencies): it runs after that producer, but nothing is added or required for it."""

    def may_consume(self) -> tuple[DataKey, ...]: ...


@runtime_checkable
class Filter(Plugin, Protocol):
    """Narrows the candidate endpoints. An empty result fails the profile."""

    def filter(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    """Scores candidates in [0, 1] (clamped by the framework); endpoints left out score 0.

    Returns a mapping from endpoint name to score, owned by the framework from then on: it
    is read after the profile's later scorers have run, so return a fresh one each call.
    """

    def score(
        self, state: CycleState, request: Request, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]: ...


@runtime_checkable
class Picker(Plugin, Protocol):
    """Chooses the targets of a profile from the scored survivors (best first)."""

    def pick(
        self, state: CycleState, request: Request, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult: ...


@runtime_checkable
class ProfileHandler(Plugin, Protocol):
    """Decides which profiles run, in rounds, and which result is primary.

    The scheduler calls ``pick_profiles`` repeatedly with the results so far and runs the
    profiles it returns, until it returns an empty mapping; then ``process_results``.
    """

    def pick_profiles(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfileView]: ...

    def process_results(
        self,
        state: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult: ...


@runtime_checkable
class RequestHeaderProcessor(Plugin, Protocol):
    """llm-d's RequestHeaderProcessor: reads the request's headers before admission and records
    what it finds in ``request.extra`` (``agent-identity`` sets the fairness id's source).

    Request control runs every configured one in ``parse``, before flow control; with none
    configured the request path pays one test of an empty tuple.
    """

    def request_header(self, request: Request) -> None: ...


@runtime_checkable
class Screener(Plugin, Protocol):
    """Narrows the candidates once per request, after admission and before any profile runs
    (llm-d-router's ``requestcontrol.Screener``), so no later filter, scorer or picker can
    undo it. ``ready`` is every endpoint in rotation (for pool-wide state such as rollout
    coverage); ``endpoints`` what this request may use. Nothing left: 503.
    """

    def screen(
        self, request: Request, endpoints: Sequence[Endpoint], ready: Sequence[Endpoint]
    ) -> list[Endpoint]: ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    """Told the scheduling result just before the request is forwarded (affinity learns here).

    May add request headers for the model server (e.g. ``x-prefiller-host-port``) by writing
    into ``headers``.
    """

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None: ...


@runtime_checkable
class ResponseHeaderProcessor(Plugin, Protocol):
    """Told when the model server's response headers arrive (llm-d-router's
    ``requestcontrol.ResponseHeaderProcessor``); may add response headers for the client by
    writing into ``headers``. Unlike ResponseComplete's, these reach a stream's client too.
    """

    def response_header(
        self, request: Request, endpoint: Endpoint, headers: dict[str, str]
    ) -> None: ...


@runtime_checkable
class ResponseComplete(Plugin, Protocol):
    """Told how a request ended (always called once per forwarded request, even on errors).

    May add response headers for the client (e.g. ``x-session-token``) via ``response.headers``.
    """

    def response_complete(
        self, request: Request, response: ResponseInfo, endpoint: Endpoint
    ) -> None: ...


@runtime_checkable
class EndpointListener(Plugin, Protocol):
    """Told when endpoints leave the pool, to purge per-endpoint state."""

    def endpoints_removed(self, names: Sequence[str]) -> None: ...


@runtime_checkable
class Lifecycle(Plugin, Protocol):
    """A plugin with background work (e.g. a KV-event subscriber).

    The process hosting the scheduler (gateway, ext_proc server) awaits ``start`` on its
    event loop before serving and ``stop`` on shutdown.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SchedulerProfileView(Protocol):
    """What a ProfileHandler may know of a profile: its name (the scheduler runs it)."""

    @property
    def name(self) -> str: ...


@dataclass(slots=True)
class PluginContext:
    """What factories get besides their parameters: shared services, injectable for tests.

    ``rng`` is the only source of randomness plugins may use; ``clock`` the only clock.
    ``plugins`` lets a plugin find another by name after all are built (see ``resolve``).
    ``services`` holds shared objects by key (e.g. "tokenizers", "kv-index") that the
    gateway or ext_proc server provides.
    """

    rng: random.Random = field(default_factory=random.Random)
    clock: Clock = time.monotonic
    plugins: dict[str, Plugin] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)


class Params:
    """Typed access to a plugin's ``parameters`` with errors that name the field.

    Every getter raises ``PluginParameterError(field, expected)``; unknown keys are reported
    by ``check_unknown`` so misspelled parameters never pass silently.
    """

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        from kvgate.errors import PluginParameterError

        if raw is not None and not isinstance(raw, Mapping):
            raise PluginParameterError("", f"expected a mapping, got {_kind(raw)}")
        self._raw: Mapping[str, Any] = raw or {}
        self._seen: set[str] = set()

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._raw

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self._raw.get(key)

    def has(self, key: str) -> bool:
        return key in self._raw

    def get_int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise PluginParameterError(key, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise PluginParameterError(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def get_float(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PluginParameterError(key, f"expected a number, got {_kind(value)}")
        result = float(value)
        if minimum is not None and result < minimum:
            raise PluginParameterError(key, f"expected a number >= {minimum}, got {value}")
        if maximum is not None and result > maximum:
            raise PluginParameterError(key, f"expected a number <= {maximum}, got {value}")
        return result

    def get_bool(self, key: str, default: bool) -> bool:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PluginParameterError(key, f"expected true or false, got {_kind(value)}")
        return value

    def get_str(self, key: str, default: str) -> str:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise PluginParameterError(key, f"expected a string, got {_kind(value)}")
        return value

    def get_str_list(self, key: str, default: Sequence[str] = ()) -> list[str]:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return list(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PluginParameterError(key, f"expected a list of strings, got {_kind(value)}")
        return list(value)

    def get_mapping(self, key: str) -> Mapping[str, Any]:
        from kvgate.errors import PluginParameterError

        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise PluginParameterError(key, f"expected a mapping, got {_kind(value)}")
        return value

    def get_any(self, key: str) -> Any:
        return self._get(key)

    def check_unknown(self, *also_known: str) -> None:
        """Raise for any parameter key no getter asked for (call after reading all params)."""
        from kvgate.errors import PluginParameterError

        known = self._seen | set(also_known)
        unknown = sorted(k for k in self._raw if k not in known)
        if unknown:
            raise PluginParameterError(
                unknown[0],
                f"unknown parameter (known: {', '.join(sorted(known)) or 'none'})",
            )


@contextmanager
def params_at(key: str) -> Iterator[None]:
    """Prefix the field of a PluginParameterError raised inside with ``key.`` (nested
    sections and list entries: ``with params_at("attributes[0]"): ...``)."""
    from kvgate.errors import PluginParameterError

    try:
        yield
    except PluginParameterError as exc:
        raise PluginParameterError(
            f"{key}.{exc.field}" if exc.field else key, exc.message
        ) from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


#: A plugin factory: ``(name, params, ctx) -> plugin``.
PluginFactory = Callable[[str, Params, PluginContext], Plugin]


def state_key(name: str, type_name: str) -> str:
    """llm-d's cycle-state key for a plugin: ``"<name>/<type>"``."""
    return f"{name}/{type_name}"
