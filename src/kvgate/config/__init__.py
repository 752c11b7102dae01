"""Scheduler configuration: llm-d's EndpointPickerConfig and KServe's LLMInferenceService.

parse (:mod:`.documents`) -> validate and apply llm-d's defaults (:mod:`.loader`) ->
build the :class:`~kvgate.scheduling.scheduler.Scheduler` (:mod:`.build`)::

    from kvgate.config import load_scheduler_source, build_scheduler
    config = load_scheduler_source("epp.yaml")       # or an LLMInferenceService YAML
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))

Every mistake in a file is reported at once as a ConfigError whose problems name the file,
the field path and what was expected.
"""

from __future__ import annotations

from kvgate.config import policies
from kvgate.config.build import build_scheduler, roles_of
from kvgate.config.llmisvc import (
    LLMInferenceService,
    LoraAdapter,
    expand_template_args,
    load_llm_inference_service,
    load_scheduler_source,
)
from kvgate.config.loader import load_picker_config, picker_config_from_data
from kvgate.config.model import (
    PickerConfig,
    PluginSpec,
    ProfileSpec,
    SaturationDetectorConfig,
    WeightedRef,
)
from kvgate.config.policies import POLICY_NAMES, policy_config_text

__all__ = [
    "POLICY_NAMES",
    "LLMInferenceService",
    "LoraAdapter",
    "PickerConfig",
    "PluginSpec",
    "ProfileSpec",
    "SaturationDetectorConfig",
    "WeightedRef",
    "build_scheduler",
    "expand_template_args",
    "load_llm_inference_service",
    "load_picker_config",
    "load_scheduler_source",
    "picker_config_from_data",
    "policies",
    "policy_config_text",
    "roles_of",
]
