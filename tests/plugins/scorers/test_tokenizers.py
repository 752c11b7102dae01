"""tokenizersPoolConfig on the precise scorer and token-producer: the named model's tokenizer or a
start-up error naming it -- never a silent fall back to the built-in SmolLM2 tokenizer."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from kvgate.errors import PluginParameterError
from kvgate.kvcache.tokenize import Tokenizer, tokenizer_services
from kvgate.plugins.base import PluginContext
from plugins.kit import make

ROOT = Path(__file__).resolve().parents[3]
SMOLLM2 = ROOT / "../shared/models/smollm2-135m-instruct"
PRECISE = "precise-prefix-cache-scorer"


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HF cache holding ``Qwen/Qwen3-0.6B`` (SmolLM2's files under that name)."""
    assert (SMOLLM2 / "tokenizer.json").is_file(), f"missing test data {SMOLLM2}"
    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Qwen3-0.6B" / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SMOLLM2 / name, snap / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LOCAL_TOKENIZER_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return snap


def _pool(**pool: Any) -> dict[str, Any]:
    return {"indexerConfig": {"tokenizersPoolConfig": pool}}


def _offline() -> PluginContext:
    return PluginContext(services=tokenizer_services(None, offline=True))


def test_model_name_is_found_in_the_hf_cache(_hf_cache: Path) -> None:
    scorer = make(PRECISE, _pool(modelName="Qwen/Qwen3-0.6B"), _offline())
    assert scorer.tokenizer is Tokenizer.from_path(_hf_cache)
    assert scorer.tokenizer is not Tokenizer.default()


def test_a_model_that_cannot_be_had_stops_start_up_naming_it() -> None:
    with pytest.raises(PluginParameterError) as err:
        make(PRECISE, _pool(modelName="Qwen/Qwen3-32B"), _offline())
    assert err.value.field == "indexerConfig.tokenizersPoolConfig.modelName"
    assert "'Qwen/Qwen3-32B'" in err.value.message and "--tokenizer" in err.value.message
    with pytest.raises(PluginParameterError) as err:  # hf: null forbids downloads, as in llm-d
        make(PRECISE, _pool(modelName="Qwen/Qwen3-32B", hf=None))
    assert "hf.enabled is false" in err.value.message
    with pytest.raises(PluginParameterError) as err:
        make("token-producer", {"modelName": "Qwen/Qwen3-32B"}, _offline())
    assert err.value.field == "modelName" and "'Qwen/Qwen3-32B'" in err.value.message


def test_local_map_tokenizes_that_models_requests() -> None:
    scorer = make(
        PRECISE,
        _pool(modelName="Qwen/Qwen3-0.6B", local={"modelTokenizerMap": {"small": str(SMOLLM2)}}),
        _offline(),
    )
    assert scorer.model_tokenizers["small"] is Tokenizer.from_path(SMOLLM2)
    with pytest.raises(PluginParameterError) as err:
        make(PRECISE, _pool(local={"modelTokenizerMap": {"x": "/no/such"}}), _offline())
    assert err.value.field == "indexerConfig.tokenizersPoolConfig.local.modelTokenizerMap.x"


def test_front_door_tokenizer_then_the_builtin_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = PluginContext(services=tokenizer_services("Qwen/Qwen3-0.6B", offline=True))
    assert make(PRECISE, {}, ctx).tokenizer is ctx.services["tokenizer"]
    with caplog.at_level(logging.WARNING):
        scorer = make(PRECISE, {}, _offline())
    assert scorer.tokenizer is Tokenizer.default()
    assert "built-in SmolLM2" in caplog.text and "modelName" in caplog.text


def test_unknown_fields_are_named() -> None:
    for pool, field in (
        ({"hf": {"tokenCache": 1}}, "hf.tokenCache"),
        ({"local": {"dir": "/x"}}, "local.dir"),
        ({"modelNmae": "x"}, "modelNmae"),
    ):
        with pytest.raises(PluginParameterError) as err:
            make(PRECISE, _pool(**pool), _offline())
        assert err.value.field == f"indexerConfig.tokenizersPoolConfig.{field}"
