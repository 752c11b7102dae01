"""models-data-extractor: llm-d-router's README configuration loads, wired to its source;
on a metrics source it is refused (it reads model listings, not metrics pages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config import load_picker_config
from kvgate.errors import ConfigError

README = (
    Path(__file__).resolve().parents[2]
    / "data"
    / "llm-d-configs"
    / "llm-d-router__pkg_epp_framework_plugins_datalayer_source_models_README.md_0.yaml"
)


def test_readme_config_wires_the_extractor() -> None:
    config = load_picker_config(README, env={})
    dl = config.data_layer
    assert dl is not None and dl.models is not None
    assert ("vllm-models-source", ("vllm-models-extractor",)) in dl.sources
    assert (dl.models.scheme, dl.models.interval_s, dl.models.insecure_skip_verify) == (
        "https",
        5.0,
        False,
    )
    text = README.read_text().replace("pluginRef: vllm-models-source", "pluginRef: metrics")
    text = text.replace("plugins:\n", "plugins:\n- type: metrics-data-source\n  name: metrics\n")
    with pytest.raises(ConfigError, match="cannot read a metrics page"):
        load_picker_config(text=text)
