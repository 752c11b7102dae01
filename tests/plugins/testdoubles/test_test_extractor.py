"""test-extractor: reads only test-source's nothing; wired to a models source it is refused."""

from __future__ import annotations

import pytest

from kvgate.config import load_picker_config
from kvgate.errors import ConfigError

TEXT = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: models-data-source
- type: test-extractor
dataLayer:
  sources:
  - pluginRef: models-data-source
    extractors:
    - pluginRef: test-extractor
"""


def test_refused_on_a_source_that_produces_something() -> None:
    with pytest.raises(ConfigError) as info:
        load_picker_config(text=TEXT)
    problem = info.value.problems[0]
    assert problem.path == "dataLayer.sources[0].extractors[0].pluginRef"
    assert "(models)" in problem.message
