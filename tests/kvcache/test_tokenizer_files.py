"""kvcache.tokenizer_files: a model's tokenizer from a path, llm-d's local map and discovery, the
HF cache, or a loopback Hub (HF_ENDPOINT); offline and unknown models fail with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvgate.kvcache.tokenize import Tokenizer, load_tokenizer, tokenizer_services
from kvgate.kvcache.tokenizer_files import (
    TokenizerNotFoundError,
    TokenizerSource,
    discover,
    find_tokenizer,
)
from support.hf_hub import COMMIT, HubServer
from support.procs import kvgate_cmd

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "../shared/models/smollm2-135m-instruct"
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(autouse=True)
def _isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache and discovery root of the test's own; no real Hub."""
    assert (SMOLLM2 / "tokenizer.json").is_file(), f"missing test data {SMOLLM2}"
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LOCAL_TOKENIZER_DIR", str(tmp_path / "mnt-models"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: fails at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _snapshot(cache: Path, repo_id: str, rev: str = "abc123") -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(SMOLLM2 / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snap


def test_a_path_is_its_own_tokenizer() -> None:
    assert find_tokenizer(str(SMOLLM2)) == SMOLLM2
    assert find_tokenizer(str(SMOLLM2 / "tokenizer.json")) == SMOLLM2 / "tokenizer.json"


def test_the_hf_cache_layout_is_read(_isolated_hf: Path) -> None:
    snap = _snapshot(_isolated_hf, "Qwen/Qwen3-0.6B")
    assert find_tokenizer("Qwen/Qwen3-0.6B") == snap
    tok = load_tokenizer("Qwen/Qwen3-0.6B")
    assert tok.encode("Hello world") == Tokenizer.default().encode("Hello world")


def test_tokenizers_cache_dir_is_read_before_the_standard_cache(tmp_path: Path) -> None:
    own = _snapshot(tmp_path / "own-cache", "org/model")
    source = TokenizerSource(hf_cache_dir=str(tmp_path / "own-cache"), offline=True)
    assert find_tokenizer("org/model", source) == own


def test_local_map_and_auto_discovery_as_llm_d_names_them(tmp_path: Path) -> None:
    root = tmp_path / "mnt-models"
    _snapshot(root / "hub", "Qwen/Qwen3-0.6B")
    plain = root / "llama" / "8b"
    plain.mkdir(parents=True)
    shutil.copyfile(SMOLLM2 / "tokenizer.json", plain / "tokenizer.json")
    assert set(discover(root, "tokenizer.json")) == {"Qwen/Qwen3-0.6B", "llama/8b"}
    assert find_tokenizer("llama/8b") == plain / "tokenizer.json"
    source = TokenizerSource(model_tokenizer_map={"mine": str(SMOLLM2)})
    assert find_tokenizer("mine", source) == SMOLLM2
    bad = TokenizerSource(model_tokenizer_map={"mine": str(tmp_path / "nowhere")})
    with pytest.raises(TokenizerNotFoundError, match=r"local\.modelTokenizerMap\[mine\]"):
        find_tokenizer("mine", bad)


def test_offline_names_the_model_and_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TokenizerNotFoundError) as err:
        find_tokenizer("Qwen/Qwen3-0.6B", TokenizerSource(offline=True))
    message = str(err.value)
    assert "'Qwen/Qwen3-0.6B'" in message and "--offline" in message
    assert "--tokenizer PATH" in message and "modelTokenizerMap" in message
    assert "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerNotFoundError, match="downloads are off"):
        find_tokenizer("Qwen/Qwen3-0.6B")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(TokenizerNotFoundError, match=r"hf\.enabled is false"):
        find_tokenizer("Qwen/Qwen3-0.6B", TokenizerSource(hf_enabled=False))


def test_a_failed_download_is_one_line_naming_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer({REPO: SMOLLM2}) as hub, pytest.raises(TokenizerNotFoundError) as err:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        find_tokenizer("nobody/nothing")
    assert "'nobody/nothing'" in str(err.value) and "Hub download failed" in str(err.value)
    assert "\n" not in str(err.value)


def test_download_from_a_hub_into_the_cache_then_offline(
    _isolated_hf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubServer({REPO: SMOLLM2}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        folder = find_tokenizer(REPO)
        fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET"}
    assert folder == _isolated_hf / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert fetched == {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    tok = Tokenizer.from_path(folder)
    assert tok.chat_template == Tokenizer.default().chat_template
    # the server is gone: the cached copy is found without asking anyone
    assert find_tokenizer(REPO, TokenizerSource(offline=True)) == folder


def test_front_door_services() -> None:
    services = tokenizer_services(None, offline=True)
    assert services == {"hf-offline": True}
    services = tokenizer_services(str(SMOLLM2))
    assert isinstance(services["tokenizer"], Tokenizer)
    with pytest.raises(TokenizerNotFoundError):
        tokenizer_services("Qwen/Qwen3-0.6B", offline=True)


@pytest.mark.parametrize("door", ["serve", "epp"])
def test_front_doors_stop_at_start_up_naming_the_model(door: str, tmp_path: Path) -> None:
    """``--tokenizer MODEL --offline`` with MODEL nowhere on disk: one line, exit 1."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "0"}
    args = ["--port", "0"] if door == "serve" else ["--grpc-port", "0", "--endpoint", "127.0.0.1:9"]
    result = subprocess.run(
        kvgate_cmd(door, "--tokenizer", "Qwen/Qwen3-32B", "--offline", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0, result.stdout
    line = next(x for x in result.stderr.splitlines() if "--tokenizer" in x)
    assert "'Qwen/Qwen3-32B'" in line and "downloads are off" in line, result.stderr
