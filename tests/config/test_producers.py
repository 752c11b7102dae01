"""Data-producer defaulting: llm-d's auto-added producers and the errors for missing ones."""

from __future__ import annotations

import pytest

from kvgate.config import build_scheduler
from kvgate.config.loader import load_picker_config_text
from kvgate.config.producers import add_default_producers
from kvgate.errors import ConfigError
from kvgate.plugins.registry import default_registry

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _resolve(plugins: str) -> list[tuple[str, str, bool]]:
    config = add_default_producers(
        load_picker_config_text(HEAD + "plugins:\n" + plugins, "epp.yaml"), default_registry()
    )
    return [(p.name, p.canonical_type, p.added_by_default) for p in config.plugins]


def test_consumers_get_their_default_producers_transitively() -> None:
    added = _resolve(
        "- type: prefix-cache-affinity-filter\n- type: token-load-scorer\n- type: max-score-picker\n"
    )
    assert [a for a in added if a[2] and a[0] != "single-profile-handler"] == [
        ("approx-prefix-cache-producer", "approx-prefix-cache-producer", True),
        ("inflight-load-producer", "inflight-load-producer", True),
        ("token-producer", "token-producer", True),  # needed by inflight-load-producer
    ]


def test_a_configured_default_producer_is_not_added_twice() -> None:
    added = _resolve(
        "- type: approx-prefix-cache-producer\n"
        "- type: prefix-cache-scorer\n  parameters: {prefixMatchInfoProducerName: approx-prefix-cache-producer}\n"
    )
    assert [a[0] for a in added].count("approx-prefix-cache-producer") == 1


def test_a_named_producer_that_is_missing_is_an_error_naming_both() -> None:
    text = HEAD + (
        "plugins:\n- type: prefix-cache-scorer\n  name: gpu-scorer\n"
        "  parameters: {prefixMatchInfoProducerName: gpu}\n"
        "- type: approx-prefix-cache-producer\n  name: cpu\n"
    )
    with pytest.raises(ConfigError) as err:
        build_scheduler(load_picker_config_text(text, "epp.yaml"))
    message = str(err.value)
    assert "plugins[gpu-scorer]" in message and "'gpu'" in message
    assert "PrefixCacheMatchInfoDataKey" in message and "not configured" in message


def test_a_named_plugin_that_produces_something_else_is_an_error() -> None:
    text = HEAD + (
        "plugins:\n- type: token-load-scorer\n  parameters: {inFlightLoadProducerName: tok}\n"
        "- type: token-producer\n  name: tok\n"
    )
    with pytest.raises(ConfigError, match=r"type token-producer.* does not produce it"):
        build_scheduler(load_picker_config_text(text, "epp.yaml"))
