"""llm-d's ``tokenizersPoolConfig`` -> the tokenizers a plugin encodes prompts with.

Shared by ``precise-prefix-cache-scorer`` (and so ``precise-prefix-cache-producer``) and
``token-producer``. Fields (llm-d-kv-cache's ``tokenization.Config``; unknown keys are
errors naming the field):

* ``modelName``: the model whose tokenizer to use (``Qwen/Qwen3-0.6B``), found through
  ``local``, the Hugging Face cache, or the Hub (:mod:`kvgate.kvcache.tokenizer_files`);
* ``local`` {``modelTokenizerMap`` model -> tokenizer.json or folder, ``autoDiscoveryDir``,
  ``autoDiscoveryTokenizerFileName``}: every map entry is loaded at start-up, and a request
  for that model is tokenized with it; ``local: null`` turns the section off;
* ``hf`` {``enabled`` (default true), ``huggingFaceToken`` (default ``$HF_TOKEN``),
  ``tokenizersCacheDir`` (the Hub cache read and downloaded into)}; ``hf: null`` or
  ``enabled: false`` forbids downloads, as ``kvgate --offline`` / ``HF_HUB_OFFLINE=1`` do;
* kvgate's ``tokenizerPath``: a tokenizer.json or folder, the default tokenizer;
* ``uds`` {``socketFile``}, ``workersCount``, ``minPrefixOverlapRatio``: accepted; kvgate
  tokenizes in-process (the sidecar is not contacted, which start-up logs).

The default tokenizer is, first found: ``tokenizerPath``, ``modelName``, the front door's
``--tokenizer``, and -- only when none of them names anything -- the built-in SmolLM2 one,
with a start-up warning that block keys then match SmolLM2 engines only. A named model
whose tokenizer cannot be had is a start-up error naming the model and the options; the
configuration check (the loader's trial build) loads no tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from kvgate.errors import PluginParameterError
from kvgate.kvcache.tokenize import (
    OFFLINE_SERVICE,
    TOKENIZER_SERVICE,
    TRIAL_SERVICE,
    Tokenizer,
    load_tokenizer,
)
from kvgate.kvcache.tokenizer_files import TokenizerNotFoundError, TokenizerSource
from kvgate.plugins.base import Params, PluginContext

log = logging.getLogger("kvgate.plugins.tokenizers")


@dataclass(frozen=True, slots=True)
class PluginTokenizers:
    """The default tokenizer and the per-model ones (request model -> tokenizer)."""

    default: Tokenizer
    per_model: Mapping[str, Tokenizer]
    #: Where the default came from, for the start-up log line.
    origin: str

    def for_model(self, model: str) -> Tokenizer:
        return self.per_model.get(model, self.default)


def _load(ref: str, source: TokenizerSource, field: str) -> Tokenizer:
    try:
        return load_tokenizer(ref, source)
    except TokenizerNotFoundError as exc:
        raise PluginParameterError(field, str(exc)) from None


def _source(pool: Params, offline: bool) -> TokenizerSource:
    local_map: dict[str, str] = {}
    local = Params(pool.get_mapping("local"))
    for model, path in local.get_mapping("modelTokenizerMap").items():
        if not isinstance(path, str) or not path:
            raise PluginParameterError(
                f"local.modelTokenizerMap.{model}", "expected a tokenizer.json or folder path"
            )
        local_map[str(model)] = path
    discovery_dir = local.get_str("autoDiscoveryDir", "")
    discovery_file = local.get_str("autoDiscoveryTokenizerFileName", "")
    try:
        local.check_unknown()
    except PluginParameterError as exc:
        raise PluginParameterError(f"local.{exc.field}", exc.message) from None
    hf_enabled = pool.raw.get("hf", {}) is not None  # ``hf: null`` switches it off, as in llm-d
    hf = Params(pool.get_mapping("hf"))
    hf_enabled = hf.get_bool("enabled", hf_enabled) and hf_enabled
    token = hf.get_str("huggingFaceToken", "")
    cache_dir = hf.get_str("tokenizersCacheDir", "")
    try:
        hf.check_unknown()
    except PluginParameterError as exc:
        raise PluginParameterError(f"hf.{exc.field}", exc.message) from None
    return TokenizerSource(
        model_tokenizer_map=local_map,
        auto_discovery_dir=discovery_dir,
        auto_discovery_file_name=discovery_file,
        hf_enabled=hf_enabled,
        hf_token=token,
        hf_cache_dir=cache_dir,
        offline=offline,
    )


def pool_tokenizers(
    pool: Params, ctx: PluginContext, owner: str, *, model_name: str = ""
) -> PluginTokenizers:
    """Read ``tokenizersPoolConfig`` (``pool``) and load what it names; see the module docstring.

    ``model_name`` is a ``modelName`` given outside the section (token-producer's top level).
    Field errors are relative to the section. ``owner`` names the plugin in log lines.
    """
    offline = bool(ctx.services.get(OFFLINE_SERVICE, False))
    source = _source(pool, offline)
    model = pool.get_str("modelName", model_name)
    path = pool.get_str("tokenizerPath", "")
    pool.get_int("workersCount", 5, minimum=1)
    pool.get_float("minPrefixOverlapRatio", 0.8, minimum=0.0, maximum=1.0)
    uds = Params(pool.get_mapping("uds"))
    socket = uds.get_str("socketFile", "/tmp/tokenizer/tokenizer-uds.socket")
    try:
        uds.check_unknown()
    except PluginParameterError as exc:
        raise PluginParameterError(f"uds.{exc.field}", exc.message) from None
    pool.check_unknown()
    if pool.raw.get("uds") is not None:
        log.warning(
            "%s: tokenizersPoolConfig.uds (%s) is not contacted; kvgate tokenizes in-process "
            "with the model's tokenizer",
            owner,
            socket,
        )

    if ctx.services.get(TRIAL_SERVICE):
        # the loader's trial build (``kvgate config check``) checks fields, not tokenizers:
        # they are found, read or downloaded when the scheduler is built at start-up
        return PluginTokenizers(Tokenizer.default(), {}, "not loaded by the configuration check")
    per_model = {
        name: _load(p, source, f"local.modelTokenizerMap.{name}")
        for name, p in source.model_tokenizer_map.items()
    }
    service = ctx.services.get(TOKENIZER_SERVICE)
    if path:
        default, origin = _load(path, source, "tokenizerPath"), f"tokenizerPath {path}"
    elif model:
        default = per_model.get(model) or _load(model, source, "modelName")
        origin = f"modelName {model}"
    elif isinstance(service, Tokenizer):
        default, origin = service, "--tokenizer"
    else:
        default, origin = Tokenizer.default(), "built-in SmolLM2-135M-Instruct"
        log.warning(
            "%s: no tokenizersPoolConfig.modelName and no --tokenizer: prompts are tokenized "
            "with the built-in SmolLM2-135M-Instruct tokenizer, so block keys match only "
            "engines serving that model; set modelName to the served model",
            owner,
        )
    log.info("%s: tokenizer from %s", owner, origin)
    return PluginTokenizers(default, per_model, origin)
