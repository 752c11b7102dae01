"""Score a request with the live scheduler without side effects, and say what each part saw.

A real request changes the scheduler's state only in PreRequest and ResponseComplete hooks
(the approximate prefix index learns where a request went in PreRequest; the precise
scorer's speculative blocks likewise), and the dry run calls neither. What scheduling itself
touches is undone or left out:

* pickers' and filters' random generators (tie-breaking, affinity's exploration) and every
  scalar attribute of every plugin (round-robin's position, the prefix index's next purge
  time) are saved before and restored after (:func:`frozen_plugin_state`), so the next real
  request is scheduled exactly as if the dry run had not happened;
* plugin timings are not observed (no ``kvgate_plugin_duration_seconds`` sample) and no
  request is counted, logged or admitted through flow control.

Left as is, because a real request does the same and it changes no routing decision: the
approximate index marks the candidates as seen (its 2-minute staleness clock), the precise
index counts one lookup in its statistics, and a tokenizer's chunk cache may keep the prompt.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kvgate.errors import SchedulingError
from kvgate.plugins.scorers.precise_prefix_cache_scorer import EXTRA_CACHED_TOKENS
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheState
from kvgate.scheduling import data
from kvgate.scheduling.data import PrefixCacheMatchInfo
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import Endpoint, Request, RequestKind, SchedulingResult

if TYPE_CHECKING:
    from kvgate.requestcontrol.control import RequestControl


def _no_observer(point: str, type_name: str, name: str, seconds: float) -> None:
    return None


def _plugin_objects(scheduler: Scheduler) -> list[object]:
    """Every plugin object the scheduler calls, once each."""
    found: dict[int, object] = {}
    for plugin in scheduler.plugins:
        found[id(plugin)] = plugin
    for profile in scheduler.profiles.values():
        for obj in (*profile.filters, *(ws.scorer for ws in profile.scorers), profile.picker):
            found[id(obj)] = obj
    found[id(scheduler.handler)] = scheduler.handler
    return list(found.values())


def _attributes(obj: object) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for name, value in getattr(obj, "__dict__", {}).items():
        seen.add(name)
        yield name, value
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in seen and name not in ("__dict__", "__weakref__"):
                seen.add(name)
                if hasattr(obj, name):
                    yield name, getattr(obj, name)


@contextmanager
def frozen_plugin_state(scheduler: Scheduler) -> Iterator[None]:
    """Restore, on exit, every plugin's random generators and scalar attributes."""
    generators: list[tuple[random.Random, object]] = []
    scalars: list[tuple[object, str, object]] = []
    for obj in _plugin_objects(scheduler):
        for name, value in _attributes(obj):
            if isinstance(value, random.Random):
                generators.append((value, value.getstate()))
            elif isinstance(value, int | float | str | bool) or value is None:
                scalars.append((obj, name, value))
    try:
        yield
    finally:
        for generator, state in generators:
            generator.setstate(state)  # type: ignore[arg-type]
        for obj, name, value in scalars:
            if getattr(obj, name, value) is not value:
                object.__setattr__(obj, name, value)


def dry_schedule(
    scheduler: Scheduler, request: Request, candidates: list[Endpoint]
) -> SchedulingResult:
    """``scheduler.schedule`` with no side effects (see the module docstring)."""
    quiet = dataclasses.replace(scheduler, observe=_no_observer)
    with frozen_plugin_state(scheduler):
        return quiet.schedule(request, candidates)


def fresh_copy(request: Request) -> Request:
    """The same request with nothing memoised by an earlier scheduling cycle."""
    return dataclasses.replace(request, extra={}, produced={})


def kind_of(parsed: Mapping[str, Any]) -> RequestKind:
    """An OpenAI body's API: chat when it has ``messages``, else completions."""
    return "chat" if "messages" in parsed else "completions"


def _prefix_views(scheduler: Scheduler, request: Request) -> dict[str, dict[str, dict[str, Any]]]:
    """``{endpoint: {"approximate"|"precise": {tokens, blocks, total_blocks, source}}}`` from
    what the prefix producers and scorers left on the request."""
    types = {p.name: p.type_name for p in scheduler.plugins}
    out: dict[str, dict[str, dict[str, Any]]] = {}

    def put(endpoint: str, kind: str, view: dict[str, Any]) -> None:
        out.setdefault(endpoint, {}).setdefault(kind, view)

    prefix = data.PREFIX_CACHE_MATCH_INFO + "/"
    for key, value in request.produced.items():
        if not key.startswith(prefix) or not isinstance(value, Mapping):
            continue
        producer = key[len(prefix) :]
        kind = "precise" if "precise" in types.get(producer, "") else "approximate"
        for endpoint, info in value.items():
            if isinstance(info, PrefixCacheMatchInfo):
                put(
                    endpoint,
                    kind,
                    {
                        "tokens": int(info.cached_block_count) * info.block_size_tokens,
                        "blocks": int(info.cached_block_count),
                        "total_blocks": info.total_blocks,
                        "source": producer,
                    },
                )
    for key, value in request.extra.items():
        if isinstance(value, PrefixCacheState):  # the standalone approximate scorer
            chain = value.chain
            for endpoint in {*value.matches, *out}:
                blocks = value.matches.get(endpoint, 0)
                put(
                    endpoint,
                    "approximate",
                    {
                        "tokens": blocks * chain.block_bytes // 4,  # GIE's 4 bytes a token
                        "blocks": blocks,
                        "total_blocks": chain.num_blocks,
                        "source": key.split("/")[0],
                    },
                )
    cached = request.extra.get(EXTRA_CACHED_TOKENS)
    if isinstance(cached, Mapping):
        for endpoint, tokens in cached.items():
            put(endpoint, "precise", {"tokens": int(tokens), "blocks": None, "total_blocks": None})
    return out


def explain_request(control: RequestControl, request: Request) -> dict[str, Any]:
    """Score ``request`` (already parsed) over the current candidates; JSON-ready report.

    Raises the request path's errors for a request that would not be scheduled at all
    (404 unknown model, 503 nothing in rotation).
    """
    from kvgate.requestcontrol.control import RequestContext

    ctx = RequestContext("gateway", "/debug/explain", 0.0, request=request, model=request.model)
    candidates = control.candidates(ctx)
    scheduler = control.scheduler
    result: SchedulingResult | None = None
    error: str | None = None
    try:
        result = dry_schedule(scheduler, request, candidates)
    except SchedulingError as exc:
        error = f"{exc.reason}: {exc}"
    primary_name = result.primary_profile_name if result is not None else None
    profile = scheduler.profiles.get(primary_name or "") or next(iter(scheduler.profiles.values()))
    scored = {s.endpoint.name: s for s in result.primary.scored} if result is not None else {}
    pick = result.target.name if result is not None else None
    candidate_names = {e.name for e in candidates}
    prefixes = _prefix_views(scheduler, request)
    rows = []
    for endpoint in control.pool.all():
        name = endpoint.name
        s = scored.get(name)
        m = endpoint.metrics
        rows.append(
            {
                "name": name,
                "candidate": name in candidate_names,
                "survived_filters": s is not None,
                "picked": name == pick,
                "total": None if s is None else round(s.score, 6),
                "scores": {} if s is None else {k: round(v, 6) for k, v in s.scores.items()},
                "prefix": prefixes.get(name, {}),
                "waiting": m.waiting_queue_size,
                "running": m.running_requests_size,
                "kv_cache_usage": round(m.kv_cache_usage_percent, 4),
            }
        )
    return {
        "request_id": request.request_id,
        "model": request.model,
        "kind": request.kind,
        "profile": primary_name or profile.name,
        "pick": pick,
        "targets": [e.name for e in result.primary.targets] if result is not None else [],
        "error": error,
        "scorers": [
            {"name": ws.scorer.name, "type": ws.scorer.type_name, "weight": ws.weight}
            for ws in profile.scorers
        ],
        "picker": profile.picker.type_name,
        "endpoints": rows,
    }
