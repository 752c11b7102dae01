"""engines.fetch: resolve_model(download=True) fetches an hf:// model from the Hub (a loopback
stand-in via HF_ENDPOINT) into the HF cache, skips other weight formats next to safetensors,
then finds it offline; HF_HUB_OFFLINE refuses in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.engines import resolve_model
from kvgate.errors import EngineError
from support.hf_hub import COMMIT, REPO, HubServer


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
