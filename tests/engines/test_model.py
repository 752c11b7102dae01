"""Model resolution: the prepared SmolLM2, local folders, the local HF cache, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.engines import resolve_model
from kvgate.engines.model import SMOLLM2_HF_ID, smollm2_dir
from kvgate.errors import EngineError

QWEN_CONFIG = {
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 1024,
    "max_position_embeddings": 40960,
}


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def test_hf_model_missing_offline_is_one_clear_line(empty_hf_cache: Path) -> None:
    with pytest.raises(EngineError) as err:
        resolve_model("hf://Qwen/Qwen3-0.6B")
    message = str(err.value)
    assert "\n" not in message
    assert "Qwen/Qwen3-0.6B" in message and "--engine sim" in message
    assert str(empty_hf_cache) in message


def test_hf_model_resolves_without_files_for_the_simulator(empty_hf_cache: Path) -> None:
    source = resolve_model("hf://Qwen/Qwen3-0.6B", require_local=False)
    assert source.name == "Qwen/Qwen3-0.6B" and source.path is None


def test_hf_model_found_in_the_local_cache(empty_hf_cache: Path) -> None:
    repo = empty_hf_cache / "models--Qwen--Qwen3-0.6B"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(QWEN_CONFIG))
    (snap / "model.safetensors").write_bytes(b"\0")
    (snap / "tokenizer.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    source = resolve_model("hf://Qwen/Qwen3-0.6B")
    assert source.path == snap and source.tokenizer == snap
    assert source.name == "Qwen/Qwen3-0.6B"
    assert source.max_position_embeddings == 40960
    assert source.kv_bytes_per_token == 2 * 28 * 8 * 128 * 2


def test_cached_config_without_weights_is_not_enough(empty_hf_cache: Path) -> None:
    snap = empty_hf_cache / "models--Qwen--Qwen3-0.6B" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(QWEN_CONFIG))
    with pytest.raises(EngineError, match="not in the local Hugging Face cache"):
        resolve_model("Qwen/Qwen3-0.6B")


def test_local_folder_and_other_schemes(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN_CONFIG))
    source = resolve_model(str(folder), name="mine")
    assert source.path == folder and source.name == "mine" and source.tokenizer is None
    assert resolve_model(f"file://{folder}").path == folder
    with pytest.raises(EngineError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(EngineError, match="cannot fetch s3://"):
        resolve_model("s3://bucket/model")


def test_builtin_smollm2_needs_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert smollm2_dir() == tmp_path / "cache" / "kvgate" / "models" / "smollm2-135m-instruct"
    with pytest.raises(EngineError, match="make model"):
        resolve_model("smollm2")
    source = resolve_model(f"hf://{SMOLLM2_HF_ID}", require_local=False)
    assert source.path is None and source.name == SMOLLM2_HF_ID


def test_cli_prepare_of_a_missing_model_fails_with_one_line(empty_hf_cache: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvgate", "model", "prepare", "hf://Qwen/Qwen3-0.6B"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--engine sim" in errors[0]
