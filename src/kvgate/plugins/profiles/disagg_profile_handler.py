"""``disagg-profile-handler`` (llm-d-router): decode always, prefill when its decider says so.

llm-d's successor of ``pd-profile-handler``; the per-request decision moved into decider
plugins (``prefix-based-pd-decider``, ``always-disagg-pd-decider``).

* Parameters, nested form (llm-d's current): ``profiles.decode`` (``"decode"``),
  ``profiles.prefill`` (``"prefill"``), ``profiles.encode`` (``"encode"``) — profile names;
  ``deciders.prefill`` — the name of a configured decider plugin; unset, P/D is off and every
  request is decode-only; ``deciders.encode`` — refused: kvgate has no encode (E) stage;
  ``stageOrder`` — ``decode-first`` (default) or ``prefill-first`` (llm-d also accepts
  ``decode``/``prefill``, any case, ``-``/``_`` ignored).
  Flat form (llm-d's deprecated one, still loaded): ``decodeProfile``, ``prefillProfile``,
  ``encodeProfile``, ``prefillDeciderPluginName``, ``encodeDeciderPluginName``,
  ``deciderPluginName`` (a lower-priority alias of the prefill decider), ``stageOrder``. A
  parameter block mixing the two forms is an error, as in llm-d.
* Rounds, decode-first: (1) run decode; (2) stop if it found nothing; (3) if the prefill
  profile exists and the decider approves on the decode pick, run prefill. Prefill-first
  (no decider allowed): prefill runs whenever its profile exists, then decode.
* Result: decode is primary and must have a target (else 429 "failed to find available
  decode workers"); a prefill result is kept when it ran and picked.
* PreRequest (llm-d's handler sets these itself): ``x-prefiller-host-port`` from the prefill
  pick, as ``disagg-headers-handler`` does.
* Inputs: declares ``PrefixCacheMatchInfo`` and ``TokenizedPrompt`` as llm-d's handler does,
  so their default producers are added when none is configured. State: a per-cycle marker of
  a prefill stage the decider declined (so it is asked once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvgate.errors import PluginParameterError, SchedulingFailedError
from kvgate.plugins.base import Params, PluginContext, SchedulerProfileView
from kvgate.plugins.producers.token_producer import TYPE as TOKEN_PRODUCER
from kvgate.plugins.profiles.deciders import Decider
from kvgate.plugins.profiles.disagg_headers_handler import set_disagg_headers
from kvgate.plugins.scorers.prefix_cache_scorer import DEFAULT_PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey
from kvgate.scheduling.types import CycleState, ProfileRunResult, Request, SchedulingResult

TYPE = "disagg-profile-handler"

DECODE_FIRST = "decode-first"
PREFILL_FIRST = "prefill-first"

_NESTED = ("stageOrder", "profiles", "deciders")
_FLAT = (
    "stageOrder",
    "decodeProfile",
    "prefillProfile",
    "encodeProfile",
    "prefillDeciderPluginName",
    "encodeDeciderPluginName",
    "deciderPluginName",
)
_NO_ENCODE = (
    "kvgate has no encode (E) stage: it routes text requests and its sidecar runs prefill "
    "and decode legs only; remove the encode decider"
)


def parse_stage_order(value: str) -> str:
    """llm-d's ParseStageOrder: case and ``-``/``_`` are ignored; empty means decode-first."""
    key = value.lower().replace("-", "").replace("_", "")
    if key in ("", "decodefirst", "decode"):
        return DECODE_FIRST
    if key in ("prefillfirst", "prefill"):
        return PREFILL_FIRST
    raise PluginParameterError(
        "stageOrder", f"expected '{DECODE_FIRST}' or '{PREFILL_FIRST}', got {value!r}"
    )


class DisaggProfileHandler:
    """ProfileHandler + PreRequest + Consumer for P/D disaggregation."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        ctx: PluginContext,
        *,
        decode_profile: str = "decode",
        prefill_profile: str = "prefill",
        encode_profile: str = "encode",
        prefill_decider: str = "",
        stage_order: str = DECODE_FIRST,
    ) -> None:
        self.name = name
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.encode_profile = encode_profile
        self.prefill_decider = prefill_decider
        self.stage_order = stage_order
        self._ctx = ctx
        self._declined = f"kvgate.disagg.declined/{name}"

    def consumes(self) -> tuple[DataKey, ...]:
        return (
            DataKey(data.PREFIX_CACHE_MATCH_INFO, DEFAULT_PRODUCER),
            DataKey(data.TOKENIZED_PROMPT, TOKEN_PRODUCER),
        )

    def check_references(self, plugins: Mapping[str, object]) -> None:
        """Called once every plugin is built: the named decider exists and is one."""
        if not self.prefill_decider:
            return
        found = plugins.get(self.prefill_decider)
        if found is None:
            raise PluginParameterError(
                "deciders.prefill",
                f"no plugin named {self.prefill_decider!r} is configured "
                "(expected the name of a prefix-based-pd-decider or always-disagg-pd-decider)",
            )
        if not isinstance(found, Decider):
            raise PluginParameterError(
                "deciders.prefill",
                f"plugin {self.prefill_decider!r} (type {getattr(found, 'type_name', '?')}) "
                "is not a P/D decider",
            )

    def _decider(self) -> Decider | None:
        found = self._ctx.plugins.get(self.prefill_decider) if self.prefill_decider else None
        return found if isinstance(found, Decider) else None

    def pick_profiles(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfileView]:
        decode, prefill = self.decode_profile, self.prefill_profile
        if self.stage_order == PREFILL_FIRST:
            if decode in results:
                return {}
            if prefill in profiles and prefill not in results:
                return {prefill: profiles[prefill]}
            return {decode: profiles[decode]} if decode in profiles else {}
        if decode not in results:
            return {decode: profiles[decode]} if decode in profiles else {}
        decoded = results[decode]
        if decoded is None or not decoded.targets:
            return {}
        if prefill not in profiles or prefill in results or state.read(self._declined, bool):
            return {}
        decider = self._decider()
        if decider is not None and decider.disaggregate(request, decoded.targets[0]):
            return {prefill: profiles[prefill]}
        state.write(self._declined, True)
        return {}

    def process_results(
        self,
        state: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        decode = results.get(self.decode_profile)
        if decode is None or not decode.targets:
            raise SchedulingFailedError("failed to find available decode workers")
        kept: dict[str, ProfileRunResult | None] = {self.decode_profile: decode}
        prefill = results.get(self.prefill_profile)
        if prefill is not None and prefill.targets:
            kept[self.prefill_profile] = prefill
        return SchedulingResult(kept, self.decode_profile)

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        set_disagg_headers(result, headers, self.prefill_profile, self.encode_profile)


def _sub(params: Params, key: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    value = params.get_mapping(key)
    for sub, item in value.items():
        if sub not in known:
            raise PluginParameterError(
                f"{key}.{sub}", f"unknown parameter (known: {', '.join(known)})"
            )
        if not isinstance(item, str):
            raise PluginParameterError(f"{key}.{sub}", "expected a string")
    return value


def create(name: str, params: Params, ctx: PluginContext) -> DisaggProfileHandler:
    keys = set(params.raw)
    if keys <= set(_NESTED):
        profiles = _sub(params, "profiles", ("decode", "prefill", "encode"))
        deciders = _sub(params, "deciders", ("prefill", "encode"))
        decode = profiles.get("decode", "")
        prefill = profiles.get("prefill", "")
        encode = profiles.get("encode", "")
        prefill_decider = deciders.get("prefill", "")
        if deciders.get("encode"):
            raise PluginParameterError("deciders.encode", _NO_ENCODE)
    elif keys <= set(_FLAT):
        decode = params.get_str("decodeProfile", "")
        prefill = params.get_str("prefillProfile", "")
        encode = params.get_str("encodeProfile", "")
        prefill_decider = params.get_str("prefillDeciderPluginName", "") or params.get_str(
            "deciderPluginName", ""
        )
        params.get_str("deciderPluginName", "")  # read either way: it is known here
        if params.get_str("encodeDeciderPluginName", ""):
            raise PluginParameterError("encodeDeciderPluginName", _NO_ENCODE)
    else:
        stray = sorted(keys - set(_NESTED) - set(_FLAT))
        if stray:
            raise PluginParameterError(
                stray[0],
                f"unknown parameter (known: {', '.join(sorted(set(_NESTED) | set(_FLAT)))})",
            )
        raise PluginParameterError(
            "",
            "use one parameter format: the nested profiles/deciders or the deprecated flat "
            f"fields ({', '.join(_FLAT[1:])}), not both",
        )
    order = parse_stage_order(params.get_str("stageOrder", ""))
    if order == PREFILL_FIRST and prefill_decider:
        raise PluginParameterError(
            "deciders.prefill", f"a prefill decider is not supported in {PREFILL_FIRST} stage order"
        )
    return DisaggProfileHandler(
        name,
        ctx,
        decode_profile=decode or "decode",
        prefill_profile=prefill or "prefill",
        encode_profile=encode or "encode",
        prefill_decider=prefill_decider,
        stage_order=order,
    )
