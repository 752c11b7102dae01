"""test-source: a data source of nothing; only test-extractor may be wired to it."""

from __future__ import annotations

import pytest

from kvgate.config import load_picker_config
from kvgate.errors import ConfigError

TEXT = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: test-source
- type: %s
dataLayer:
  sources:
  - pluginRef: test-source
    extractors:
    - pluginRef: %s
"""


def test_wires_its_extractor_and_refuses_others() -> None:
    config = load_picker_config(text=TEXT % ("test-extractor", "test-extractor"))
    assert config.data_layer is not None
    assert ("test-source", ("test-extractor",)) in config.data_layer.sources
    assert config.data_layer.metrics is not None  # the default metrics source still scrapes
    with pytest.raises(ConfigError, match="does not read what this source produces"):
        load_picker_config(text=TEXT % ("models-data-extractor", "models-data-extractor"))
