"""engines.fetch: resolve_model(download=True) fetches an hf:// model from the Hub (a loopback
stand-in via HF_ENDPOINT) into the HF cache, skips other weight formats next to safetensors,
then finds it offline; HF_HUB_OFFLINE refuses in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvgate.engines import resolve_model
from kvgate.errors import EngineError
from support.hf_hub import COMMIT, HubServer

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "../shared/models/smollm2-135m-instruct"
REPO = "course/smollm2-copy"


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """SmolLM2's files plus stand-in weights: a folder the Hub serves as ``REPO``."""
    assert (SMOLLM2 / "config.json").is_file(), f"missing test data {SMOLLM2}"
    folder = tmp_path / "repo"
    shutil.copytree(SMOLLM2, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)  # skipped: safetensors exist
    return folder


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def test_resolve_model_fetches_then_finds_it_offline(
    model_repo: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubServer({REPO: model_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        model = resolve_model(f"hf://{REPO}", download=True)
    snap = hf_env / "models--course--smollm2-copy" / "snapshots" / COMMIT
    assert model.path == snap and model.tokenizer == snap and model.name == REPO
    assert (snap / "model.safetensors").is_file() and not (snap / "pytorch_model.bin").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now in the cache: no Hub needed
    assert resolve_model(f"hf://{REPO}", download=True).path == snap


def test_offline_refuses_in_one_line(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError) as err:
        resolve_model(f"hf://{REPO}", download=True)
    assert "kvgate does not download models" in str(err.value) and "\n" not in str(err.value)
