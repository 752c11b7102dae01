"""``prefix-based-pd-decider`` (llm-d): disaggregate when the decode endpoint lacks enough of the prompt.

* Parameters: ``nonCachedTokens`` (int >= 0, default 0) — the uncached suffix, in tokens, from
  which a separate prefill runs; 0 disables the decider (always decode only);
  ``promptTokens`` (int >= 0, default 0) — prompts shorter than this never disaggregate; 0
  turns that gate off.
* Decision, with ``n`` = the prompt's token count (``TokenizedPrompt`` from the token
  producer: the model tokenizer's, or llm-d's 4-bytes-a-token estimate) and ``cached`` =
  ``cached_block_count · block_size_tokens`` of the decode endpoint's
  ``PrefixCacheMatchInfo`` (unweighted, so a CPU-tier hit counts in full, as llm-d-router):
  False if ``nonCachedTokens == 0``, ``n < promptTokens``, ``n < nonCachedTokens``, or the
  match info is missing; else ``n − cached >= nonCachedTokens``.
* Inputs: ``TokenizedPrompt`` and ``PrefixCacheMatchInfo`` (its default producer's, else the
  first producer's that wrote one); ``disagg-profile-handler`` declares both, so the default
  producers are added when none is configured. State: none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kvgate.plugins.base import Params, PluginContext
from kvgate.plugins.scorers.prefix_cache_scorer import DEFAULT_PRODUCER
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, PrefixCacheMatchInfo
from kvgate.scheduling.types import Endpoint, Request

TYPE = "prefix-based-pd-decider"

log = logging.getLogger("kvgate.plugins.pd")

_DEFAULT_KEY = DataKey(data.PREFIX_CACHE_MATCH_INFO, DEFAULT_PRODUCER)
_PREFIX = data.PREFIX_CACHE_MATCH_INFO + "/"


def match_info(request: Request, endpoint: Endpoint) -> PrefixCacheMatchInfo | None:
    """The decode endpoint's prefix match: the default producer's, else any producer's."""
    found = data.per_endpoint(request, _DEFAULT_KEY, PrefixCacheMatchInfo)
    if found is None:
        for key, value in request.produced.items():
            if key.startswith(_PREFIX) and isinstance(value, Mapping):
                found = value
                break
    info = found.get(endpoint.name) if found is not None else None
    return info if isinstance(info, PrefixCacheMatchInfo) else None


class PrefixBasedPdDecider:
    """Disaggregates when the decode endpoint's uncached suffix reaches ``nonCachedTokens``."""

    type_name = TYPE

    def __init__(self, name: str, non_cached_tokens: int = 0, prompt_tokens: int = 0) -> None:
        self.name = name
        self.non_cached_tokens = non_cached_tokens
        self.prompt_tokens = prompt_tokens

    def disaggregate(self, request: Request, decode: Endpoint | None) -> bool:
        if self.non_cached_tokens == 0 or decode is None:
            return False
        prompt = data.tokenized(request)
        n = prompt.num_tokens if prompt is not None else 0
        if self.prompt_tokens > 0 and n < self.prompt_tokens:
            return False
        if n < self.non_cached_tokens:
            return False
        info = match_info(request, decode)
        if info is None:
            log.error("%s: no prefix cache match info for %s; decode only", self.name, decode.name)
            return False
        cached = info.cached_block_count * info.block_size_tokens
        return n - cached >= self.non_cached_tokens


def create(name: str, params: Params, ctx: PluginContext) -> PrefixBasedPdDecider:
    return PrefixBasedPdDecider(
        name,
        params.get_int("nonCachedTokens", 0, minimum=0),
        params.get_int("promptTokens", 0, minimum=0),
    )
