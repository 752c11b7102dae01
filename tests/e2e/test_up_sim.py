"""``kvgate up --engine sim``: the seed's LLMInferenceService comes up, answers through both
base URLs, shows a cache hit on a repeated prompt, and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import openai
import pytest
import yaml

from support.procs import Proc, free_port, http_ok, kvgate_cmd, wait_until

EXAMPLES = Path(str(resources.files("kvgate") / "data" / "examples"))
SEED = EXAMPLES / "llm-inference-service.yaml"  # the course's file: Qwen/Qwen3-0.6B
DEMO = EXAMPLES / "smollm2-demo.yaml"


def start_up(
    spawn: Callable[..., Proc], tmp_path: Path, *args: str, timeout_s: float = 40.0
) -> tuple[str, Proc]:
    port = free_port()
    proc = spawn(
        kvgate_cmd("up", *args, "--engine", "sim", "--port", str(port), "--run-dir", str(tmp_path)),
        name="up",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: "OpenAI base URL" in proc.log() or not proc.alive(),
        timeout_s=timeout_s,
        what="kvgate up ready line",
    )
    assert proc.alive(), proc.log()
    return base, proc


def listening_pid(port: int) -> int:
    """The process that listens on 127.0.0.1:``port`` (from /proc, no external tools)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
    raise LookupError(f"nothing listens on {port}")


def replica_urls(log: str) -> list[str]:
    return re.findall(r"starting replica-\d+ on (http://\S+)", log)


def test_seed_file_with_sim_engine(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    base, proc = start_up(spawn, tmp_path, str(SEED), "--replicas", "2")
    log = proc.log()
    assert f"{base}/v1" in log
    assert f"{base}/my-llmd-deployment/qwen-model/v1" in log
    replicas = replica_urls(log)
    assert len(replicas) == 2
    c = openai.OpenAI(
        base_url=f"{base}/my-llmd-deployment/qwen-model/v1", api_key="unused", max_retries=0
    )
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Explain Kubernetes in 50 words. " * 8},
    ]
    first = c.chat.completions.create(model="Qwen/Qwen3-0.6B", messages=messages, max_tokens=8)  # type: ignore[arg-type]
    second = c.chat.completions.create(model="Qwen/Qwen3-0.6B", messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # the prefix-cache scorer sent the repeat to the replica that holds the prefix
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) > 0
    plain = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in plain.models.list()] == ["Qwen/Qwen3-0.6B"]
    # a replica that dies is reported, restarted with backoff, and serves again
    os.kill(listening_pid(int(replicas[0].rsplit(":", 1)[1])), signal.SIGKILL)
    wait_until(
        lambda: re.search(r"replica-0 exited.*\n(.*\n)*.*replica-0 ready", proc.log()) is not None,
        timeout_s=30,
        what="replica-0 restarted",
    )
    wait_until(lambda: http_ok(replicas[0] + "/health"), timeout_s=10, what="replica-0 healthy")
    for _ in range(3):
        r = plain.completions.create(model="Qwen/Qwen3-0.6B", prompt="Hello", max_tokens=2)
        assert r.choices
    assert proc.stop() == 0
    log = proc.log_path.read_text()
    assert "received SIGTERM" in log and "kvgate up: stopped" in log
    for url in replicas:  # every replica is gone too
        assert not http_ok(url + "/health", timeout_s=0.5)


def test_auth_annotation_generates_a_key(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["metadata"]["annotations"]["security.opendatahub.io/enable-auth"] = "true"
    f = tmp_path / "svc.yaml"
    f.write_text(yaml.safe_dump(data))
    base, proc = start_up(spawn, tmp_path, str(f), "--replicas", "1")
    m = re.search(r"API key (\S+)", proc.log())
    assert m, proc.log()
    model = data["spec"]["model"]["name"]
    with_key = openai.OpenAI(base_url=f"{base}/v1", api_key=m.group(1), max_retries=0)
    r = with_key.completions.create(model=model, prompt="Hello", max_tokens=2)
    assert r.choices
    try:
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong key was accepted")
    assert proc.stop() == 0


def test_vllm_engine_with_missing_model_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from kvgate.cli import main

    root = logging.getLogger("kvgate")  # `up` configures kvgate's logging; put it back after
    saved = (list(root.handlers), root.level, root.propagate)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    try:
        # --offline: the Hub is not asked (offline, asking it costs ~25 s of retries; the
        # download path is tested against a loopback Hub in tests/up/test_fetch.py)
        args = ["up", str(SEED), "--engine", "vllm", "--offline", "--run-dir", str(tmp_path)]
        assert main(args) == 1
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one clear line: why, and what to run instead
    assert "Qwen/Qwen3-0.6B" in err[0] and "--engine sim" in err[0]
