"""llm-d types kvgate cannot act on load as rejections that say why."""

from __future__ import annotations

import pytest

from kvgate.errors import PluginParameterError
from kvgate.plugins.registry import default_registry
from kvgate.plugins.unsupported import UNSUPPORTED
from plugins.kit import make


@pytest.mark.parametrize("type_name", sorted(UNSUPPORTED))
def test_rejected_with_the_reason(type_name: str) -> None:
    reg = default_registry()
    assert reg.canonical(type_name) == type_name and type_name not in reg.known_types()
    with pytest.raises(PluginParameterError) as err:
        make(type_name)
    assert f"plugin type {type_name!r} is not supported: " in err.value.message
    assert UNSUPPORTED[type_name] in err.value.message
