"""``pd-profile-handler`` (llm-d): prefill/decode disaggregation in two profile rounds.

* Parameters: ``threshold`` (int >= 0, default 0) — minimum uncached input (bytes of the
  prefix scorer's input, ≈ 4 per token) for a separate prefill; 0 always disaggregates;
  ``decodeProfile`` (default ``"decode"``), ``prefillProfile`` (default ``"prefill"``);
  ``prefixPluginName`` (default ``"prefix-cache-scorer"``) — whose cycle state tells how much
  of the input the decode endpoint already caches; ``hashBlockSize`` (int, default 64) —
  bytes per prefix block in that estimate; ``primaryPort`` (int, default 0) — when set, the
  decode target's port is rewritten to it and ``x-data-parallel-host-port`` carries the
  original ``ip:port`` (data-parallel ranks behind one sidecar); ``deciderPluginName`` (the
  generation between this handler and ``disagg-profile-handler``) — a configured P/D decider
  (``prefix-based-pd-decider``, ``always-disagg-pd-decider``) that decides round (2) instead
  of ``threshold`` (giving both is an error).
* Rounds: (1) run the decode profile. (2) Stop if it failed or every profile has run. If
  ``threshold > 0``: ``hit = max(matched_blocks(decode target) − 1, 0)``,
  ``cached = hit · hashBlockSize / len(input)``; when ``(1 − cached) · len(input) < threshold``
  the request stays on decode alone. Otherwise run the prefill profile.
* Result: decode is primary (its failure fails scheduling); the prefill result is included
  when it succeeded, and ``prefill-header-handler`` turns it into ``x-prefiller-host-port``.
* State: none of its own; reads the prefix scorer's :class:`PrefixCacheState`.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvgate.errors import PluginParameterError, SchedulingFailedError
from kvgate.plugins.base import Params, PluginContext, SchedulerProfileView
from kvgate.plugins.profiles.deciders import Decider
from kvgate.plugins.scorers import prefix_cache_scorer
from kvgate.plugins.scorers.no_hit_lru_scorer import prefix_state_key
from kvgate.plugins.scorers.prefix_cache_scorer import PrefixCacheState, prefix_input
from kvgate.scheduling.types import (
    HEADER_DATA_PARALLEL,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)

TYPE = "pd-profile-handler"

_ORIGINAL_KEY = "kvgate.pd.original-hostport"


class PdProfileHandler:
    """Decode first, then prefill when the uncached input is large enough (ProfileHandler + PreRequest)."""

    type_name = TYPE

    def __init__(
        self,
        name: str,
        ctx: PluginContext,
        *,
        threshold: int = 0,
        decode_profile: str = "decode",
        prefill_profile: str = "prefill",
        prefix_plugin_name: str = prefix_cache_scorer.TYPE,
        hash_block_size: int = 64,
        primary_port: int = 0,
        decider: str = "",
    ) -> None:
        self.name = name
        self.decider = decider
        self.threshold = threshold
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.prefix_plugin_name = prefix_plugin_name
        self.hash_block_size = hash_block_size
        self.primary_port = primary_port
        self._ctx = ctx

    def pick_profiles(
        self,
        state: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulerProfileView],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfileView]:
        if self.decode_profile not in results:
            decode = profiles.get(self.decode_profile)
            return {self.decode_profile: decode} if decode is not None else {}
        decode_result = results[self.decode_profile]
        if decode_result is None or not decode_result.targets or len(results) == len(profiles):
            return {}
        prefill = profiles.get(self.prefill_profile)
        if prefill is None or self.prefill_profile in results:
            return {}
        if self.decider:
            found = self._ctx.plugins.get(self.decider)
            if not isinstance(found, Decider) or not found.disaggregate(
                request, decode_result.targets[0]
            ):
                return {}
        elif self.threshold > 0 and not self._worth_prefill(
            state, request, decode_result.targets[0]
        ):
            return {}
        return {self.prefill_profile: prefill}

    def check_references(self, plugins: Mapping[str, object]) -> None:
        """Called once every plugin is built: ``deciderPluginName`` names a P/D decider."""
        if not self.decider:
            return
        found = plugins.get(self.decider)
        if not isinstance(found, Decider):
            what = "is not configured" if found is None else "is not a P/D decider"
            raise PluginParameterError("deciderPluginName", f"plugin {self.decider!r} {what}")

    def _worth_prefill(self, state: CycleState, request: Request, decode: Endpoint) -> bool:
        input_len = len(prefix_input(request))
        if input_len == 0:
            return False
        found = state.read(prefix_state_key(self._ctx, self.prefix_plugin_name), PrefixCacheState)
        matched = found.matches.get(decode.name, 0) if found is not None else 0
        hit = max(matched - 1, 0)
        cached_fraction = hit * self.hash_block_size / input_len
        return (1.0 - cached_fraction) * input_len >= self.threshold

    def process_results(
        self,
        state: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        decode = results.get(self.decode_profile)
        if decode is None or not decode.targets:
            raise SchedulingFailedError(
                f"scheduling profile {self.decode_profile!r} found no endpoint"
            )
        if self.primary_port:
            original = decode.targets[0]
            request.extra[_ORIGINAL_KEY] = original.hostport
            moved = Endpoint(
                original.name,
                original.address,
                self.primary_port,
                original.labels,
                original.metrics,
                original.scheme,
            )
            decode = ProfileRunResult((moved, *decode.targets[1:]), decode.scored)
        kept: dict[str, ProfileRunResult | None] = {self.decode_profile: decode}
        prefill = results.get(self.prefill_profile)
        if prefill is not None and prefill.targets:
            kept[self.prefill_profile] = prefill
        return SchedulingResult(kept, self.decode_profile)

    def pre_request(
        self, request: Request, result: SchedulingResult, headers: dict[str, str]
    ) -> None:
        original = request.extra.get(_ORIGINAL_KEY)
        if self.primary_port and isinstance(original, str):
            headers[HEADER_DATA_PARALLEL] = original


def create(name: str, params: Params, ctx: PluginContext) -> PdProfileHandler:
    threshold = params.get_int("threshold", 0, minimum=0)
    decider = params.get_str("deciderPluginName", "")
    if decider and threshold:
        raise PluginParameterError(
            "deciderPluginName",
            "give threshold or deciderPluginName (its decider decides), not both",
        )
    return PdProfileHandler(
        name,
        ctx,
        threshold=threshold,
        decider=decider,
        decode_profile=params.get_str("decodeProfile", "decode"),
        prefill_profile=params.get_str("prefillProfile", "prefill"),
        prefix_plugin_name=params.get_str("prefixPluginName", prefix_cache_scorer.TYPE),
        hash_block_size=params.get_int("hashBlockSize", 64, minimum=1),
        primary_port=params.get_int("primaryPort", 0, minimum=0),
    )
