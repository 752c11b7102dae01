"""A P/D scheduler built from an EndpointPickerConfig text, as the front doors build it."""

from __future__ import annotations

import random

from kvgate.config import build_scheduler, load_picker_config
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.scheduler import Scheduler
from kvgate.scheduling.types import ROLE_LABEL, Endpoint, Metrics

DECODE = Endpoint("dec", "10.0.0.1", 8001, {ROLE_LABEL: "decode"}, Metrics())
PREFILL = Endpoint("pre", "10.0.0.2", 8002, {ROLE_LABEL: "prefill"}, Metrics())


def pd_config(handler: str, decider: str = "", extra: str = "") -> str:
    """Decode/prefill profiles over an approximate prefix index with 64-token blocks."""
    return f"""
apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {{autoTune: false, blockSizeTokens: 64}}
- type: prefix-cache-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
{handler}
{decider}
{extra}
schedulingProfiles:
- name: prefill
  plugins: [{{pluginRef: prefill-filter}}, {{pluginRef: prefix-cache-scorer}}]
- name: decode
  plugins: [{{pluginRef: decode-filter}}, {{pluginRef: prefix-cache-scorer}}]
"""


def pd_scheduler(text: str) -> Scheduler:
    config = load_picker_config(text=text, source_name="epp.yaml", env={})
    return build_scheduler(config, PluginContext(rng=random.Random(0)))
