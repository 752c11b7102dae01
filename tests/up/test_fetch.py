"""``kvgate up`` fetches an ``hf://`` model from the Hub (a loopback stand-in via HF_ENDPOINT) as
KServe does; ``--offline`` keeps the one-line refusal; ``--example`` finds the shipped course file.
Real processes: the kvgate CLI in a subprocess, the Hub on loopback."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from support.hf_hub import COMMIT, REPO, HubServer
from support.procs import kvgate_cmd

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(str(resources.files("kvgate") / "data" / "examples" / "llm-inference-service.yaml"))


def _service(tmp_path: Path, uri: str) -> Path:
    text = SHIPPED.read_text()
    assert "uri: hf://Qwen/Qwen3-0.6B" in text
    path = tmp_path / "svc.yaml"
    path.write_text(text.replace("uri: hf://Qwen/Qwen3-0.6B", f"uri: {uri}"))
    return path


def _up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kvgate_cmd("up", *args), capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )


def test_up_fetches_with_progress_and_offline_refuses(
    tmp_path: Path, model_repo: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = _service(tmp_path, f"hf://{REPO}")
    missing_python = str(tmp_path / "no-vllm" / "python")
    with HubServer({REPO: model_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        offline = _up(str(svc), "--engine", "vllm", "--offline", "--vllm-python", missing_python)
        assert hub.requests == []  # --offline asked nobody
        online = _up(str(svc), "--engine", "vllm", "--vllm-python", missing_python)
    assert offline.returncode == 1
    assert "kvgate does not download models" in offline.stderr, offline.stderr
    assert f"fetching hf://{REPO}" in online.stdout, online.stdout + online.stderr
    assert "Fetching" in online.stderr  # huggingface_hub's progress bar
    assert (
        hf_env / "models--course--smollm2-copy" / "snapshots" / COMMIT / "config.json"
    ).is_file()
    # the model is there; what stops it now is the missing engine, named in one line
    assert online.returncode == 1 and "--vllm-python" in online.stderr, online.stderr


def test_example_is_the_shipped_course_file(hf_env: Path) -> None:
    assert (
        SHIPPED.read_text() == (ROOT / "../shared/examples/llm-inference-service.yaml").read_text()
    )
    result = _up("--example", "--engine", "vllm", "--offline")
    assert result.returncode == 1
    assert "model Qwen/Qwen3-0.6B is not in the local Hugging Face cache" in result.stderr
