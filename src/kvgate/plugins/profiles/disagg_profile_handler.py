"""``disagg-profile-handler`` (llm-d-router): decode always; encode and prefill when their
deciders say so (D, P/D, E/PD and E/P/D).

llm-d's successor of ``pd-profile-handler``; the per-request decisions moved into decider
plugins (``prefix-based-pd-decider``, ``always-disagg-pd-decider`` for prefill;
``always-disagg-multimodal-decider`` for encode).

* Parameters, nested form (llm-d's current): ``profiles.decode`` (``"decode"``),
  ``profiles.prefill`` (``"prefill"``), ``profiles.encode`` (``"encode"``) — profile names;
  ``deciders.prefill`` — the name of a configured decider plugin; unset, P/D is off and every
  request is decode-only; ``deciders.encode`` — likewise for the encode (E) stage; unset, no
  request is sent to an encoder; ``stageOrder`` — ``decode-first`` (default) or ``prefill-first`` (llm-d also accepts
  ``decode``/``prefill``, any case, ``-``/``_`` ignored).
  Flat form (llm-d's deprecated one, still loaded): ``decodeProfile``, ``prefillProfile``,
  ``encodeProfile``, ``prefillDeciderPluginName``, ``encodeDeciderPluginName``,
  ``deciderPluginName`` (a lower-priority alias of the prefill decider), ``stageOrder``. A
  parameter block mixing the two forms is an error, as in llm-d.
* Rounds, decode-first: (1) run decode; (2) stop if it found nothing; (3) if the encode
  profile exists and the encode decider approves on the decode pick, run encode; (4) if the
  prefill profile exists and the prefill decider approves, run prefill. Prefill-first (no
  prefill decider allowed): prefill runs whenever its profile exists, then encode when its
  decider approves (asked with no decode pick), then decode.
* Result: decode is primary and must have a target (else 429 "failed to find available
  decode workers"); prefill and encode results are kept when they ran and picked (an encode
  profile that finds no encoder leaves the request to go without the E stage, as in llm-d).
* PreRequest (llm-d's handler sets these itself): ``x-prefiller-host-port`` from the prefill
  pick and ``x-encoder-hosts-ports`` from the encode picks, as ``disagg-headers-handler``
  does; ``kvgate serve`` runs those legs itself, ``kvgate sidecar`` behind ``kvgate epp``.
* Inputs: declares ``PrefixCacheMatchInfo`` and ``TokenizedPrompt`` as llm-d's handler does,
  so their default producers are added when none is configured. State: per-cycle markers of
  the stages a decider declined (so each is asked once).
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
from kvgate.scheduling.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)

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
_DECIDER_KINDS = {
    "prefill": "prefix-based-pd-decider or always-disagg-pd-decider",
    "encode": "always-disagg-multimodal-decider",
}


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
        encode_decider: str = "",
        stage_order: str = DECODE_FIRST,
    ) -> None:
        self.name = name
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.encode_profile = encode_profile
        self.prefill_decider = prefill_decider
        self.encode_decider = encode_decider
        self.stage_order = stage_order
        self._ctx = ctx
        self._declined = f"kvgate.disagg.declined/{name}"
        self._declined_encode = f"kvgate.disagg.declined-encode/{name}"

    def consumes(self) -> tuple[DataKey, ...]:
        return (
            DataKey(data.PREFIX_CACHE_MATCH_INFO, DEFAULT_PRODUCER),
            DataKey(data.TOKENIZED_PROMPT, TOKEN_PRODUCER),
        )

    def check_references(self, plugins: Mapping[str, object]) -> None:
        """Called once every plugin is built: each named decider exists and is one."""
        for stage, name in (("prefill", self.prefill_decider), ("encode", self.encode_decider)):
            if not name:
                continue
            found = plugins.get(name)
            if found is None:
                raise PluginParameterError(
                    f"deciders.{stage}",
                    f"no plugin named {name!r} is configured "
                    f"(expected the name of a {_DECIDER_KINDS[stage]})",
                )
            if not isinstance(found, Decider):
                raise PluginParameterError(
                    f"deciders.{stage}",
                    f"plugin {name!r} (type {getattr(found, 'type_name', '?')}) is not a decider",
                )

    def _decider(self, name: str) -> Decider | None:
        found = self._ctx.plugins.get(name) if name else None
        return found if isinstance(found, Decider) else None

    def _encode(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
        decode: Endpoint | None,
    ) -> Mapping[str, SchedulerProfileView]:
        """The encode profile, if it is still to run and its decider approves."""
        encode = self.encode_profile
        if encode not in profiles or encode in results or state.read(self._declined_encode, bool):
            return {}
        decider = self._decider(self.encode_decider)
        if decider is not None and decider.disaggregate(request, decode):
            return {encode: profiles[encode]}
        state.write(self._declined_encode, True)
        return {}

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
            encode = self._encode(state, request, profiles, results, None)
            if encode:
                return encode
            return {decode: profiles[decode]} if decode in profiles else {}
        if decode not in results:
            return {decode: profiles[decode]} if decode in profiles else {}
        decoded = results[decode]
        if decoded is None or not decoded.targets:
            return {}
        encode = self._encode(state, request, profiles, results, decoded.targets[0])
        if encode:
            return encode
        if prefill not in profiles or prefill in results or state.read(self._declined, bool):
            return {}
        decider = self._decider(self.prefill_decider)
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
        for stage in (self.prefill_profile, self.encode_profile):
            found = results.get(stage)
            if found is not None and found.targets:
                kept[stage] = found
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
        encode_decider = deciders.get("encode", "")
    elif keys <= set(_FLAT):
        decode = params.get_str("decodeProfile", "")
        prefill = params.get_str("prefillProfile", "")
        encode = params.get_str("encodeProfile", "")
        prefill_decider = params.get_str("prefillDeciderPluginName", "") or params.get_str(
            "deciderPluginName", ""
        )
        params.get_str("deciderPluginName", "")  # read either way: it is known here
        encode_decider = params.get_str("encodeDeciderPluginName", "")
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
        encode_decider=encode_decider,
        stage_order=order,
    )
