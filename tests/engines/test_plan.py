"""Launch plans: the argv, environment, ports and KV-event settings each replica gets."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from kvgate.engines import EngineConfig, ModelSource, plan_launch
from kvgate.engines.hosts import cpu_list, cpu_slices, flag_value, merge_args, split_args
from kvgate.errors import EngineError


def _model(tmp_path: Path) -> ModelSource:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return ModelSource(
        uri=str(folder),
        name="smollm2",
        path=folder,
        tokenizer=None,
        max_position_embeddings=8192,
        kv_bytes_per_token=23040,
    )


@pytest.fixture
def cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only host whose engine Python is this interpreter."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("KVGATE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi, no vllm


def test_cpu_replicas_get_the_flags_that_work_and_one_core_each(
    tmp_path: Path, cpu_host: None
) -> None:
    cfg = EngineConfig(
        engine="vllm",
        model=_model(tmp_path),
        run_dir=tmp_path / "run",
        kv_cache_bytes=80_000_000,
        cpus=(0, 1),
    )
    plan = plan_launch(cfg, 2)
    assert plan.engine == "vllm" and len(plan.replicas) == 2
    ports = {r.port for r in plan.replicas}
    assert len(ports) == 2
    for i, r in enumerate(plan.replicas):
        argv = list(r.argv)
        assert argv[:3] == ["/usr/bin/taskset", "-c", str(i)] or argv[0].endswith("taskset")
        i_py = argv.index(sys.executable)
        assert argv[i_py + 1 : i_py + 3] == ["-m", "vllm.entrypoints.openai.api_server"]
        for flag in (
            "--enforce-eager",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
        ):
            assert flag in argv
        assert flag_value(argv, "--block-size") == "32"
        assert flag_value(argv, "--kv-cache-memory-bytes") == "80000000"
        # 80 MB holds 3,456 SmolLM2 tokens; vLLM refuses a max-model-len the cache cannot hold.
        assert flag_value(argv, "--max-model-len") == "3456"
        assert flag_value(argv, "--served-model-name") == "smollm2"
        assert flag_value(argv, "--port") == str(r.port)
        events = json.loads(flag_value(argv, "--kv-events-config") or "{}")
        assert events["enable_kv_cache_events"] is True and events["publisher"] == "zmq"
        assert events["topic"] == f"kv@127.0.0.1:{r.port}@smollm2" == r.kv_events_topic
        assert events["endpoint"].startswith("tcp://*:")  # "*" makes vLLM's PUB bind
        assert r.kv_events_connect == events["endpoint"].replace("*", "127.0.0.1")
        assert events["replay_endpoint"] == r.kv_events_replay_endpoint
        assert r.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert r.env["OMP_NUM_THREADS"] == "1"
        assert r.env["HF_HUB_OFFLINE"] == "1"
        assert Path(r.env["VLLM_CACHE_ROOT"]).is_relative_to(tmp_path / "run")
        assert "VLLM_CPU_KVCACHE_SPACE" in r.unset_env and "PYTHONHASHSEED" in r.unset_env
        assert r.cpus == (i,) and r.gpus is None
        assert r.ready_url == f"http://127.0.0.1:{r.port}/health"
        assert r.log_path == tmp_path / "run" / "logs" / f"replica-{i}.log"


def test_additional_args_are_merged_and_clamped(tmp_path: Path, cpu_host: None) -> None:
    extra = split_args(
        "--disable-uvicorn-access-log --max-model-len=16000 --port 9 --block-size 64"
    )
    cfg = EngineConfig(
        engine="vllm", model=_model(tmp_path), run_dir=tmp_path, extra_args=tuple(extra)
    )
    plan = plan_launch(cfg, 1)
    argv = list(plan.replicas[0].argv)
    assert "--disable-uvicorn-access-log" in argv
    # The seed's 16000 is more than SmolLM2's 8192-token context: lowered, and said so.
    assert flag_value(argv, "--max-model-len") == "8192"
    assert any("16000" in n and "8192" in n for n in plan.notes)
    # kvgate owns --port; the template's block size wins over kvgate's default.
    assert flag_value(argv, "--port") == str(plan.replicas[0].port) != "9"
    assert argv.count("--block-size") == 1 and plan.replicas[0].block_size == 64
    assert any("--port" in n for n in plan.notes)


def test_cpu_block_size_must_be_a_multiple_of_32(tmp_path: Path, cpu_host: None) -> None:
    cfg = EngineConfig(engine="vllm", model=_model(tmp_path), run_dir=tmp_path, block_size=16)
    with pytest.raises(EngineError, match="multiple of 32"):
        plan_launch(cfg, 1)


def test_replicas_beyond_the_cores_wrap_around() -> None:
    assert cpu_slices(2, [0, 1]) == [(0,), (1,)]
    assert cpu_slices(3, [0, 1]) == [(0,), (1,), (0,)]
    assert cpu_slices(2, list(range(8))) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert cpu_list((4, 5, 6, 7)) == "4-7" and cpu_list((0, 2)) == "0,2"


def test_gpu_host_runs_the_users_vllm_one_gpu_per_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text("#!/bin/sh\nexit 0\n")
    vllm.chmod(vllm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv("KVGATE_VLLM_PYTHON", raising=False)
    cfg = EngineConfig(engine="vllm", model=_model(tmp_path), run_dir=tmp_path)
    plan = plan_launch(cfg, 3)
    gpus = [r.env["CUDA_VISIBLE_DEVICES"] for r in plan.replicas]
    assert gpus == ["2", "3", "2"]
    for r in plan.replicas:
        assert r.argv[:2] == (str(vllm), "serve")
        assert "--enforce-eager" not in r.argv and "taskset" not in r.argv[0]
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in r.env
        assert r.block_size == 16  # vLLM's GPU default


def test_gpu_host_without_vllm_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("KVGATE_VLLM_PYTHON", raising=False)
    cfg = EngineConfig(engine="vllm", model=_model(tmp_path), run_dir=tmp_path)
    with pytest.raises(EngineError, match="--vllm-python"):
        plan_launch(cfg, 1)


def test_missing_engine_venv_says_make_vllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("KVGATE_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("KVGATE_VLLM_VENV", str(tmp_path / "no-venv"))
    cfg = EngineConfig(engine="vllm", model=_model(tmp_path), run_dir=tmp_path)
    with pytest.raises(EngineError, match="make vllm"):
        plan_launch(cfg, 1)


def test_sim_replicas_are_configured_like_vllm(tmp_path: Path) -> None:
    extra = split_args("--disable-uvicorn-access-log --max-num-seqs 8")
    cfg = EngineConfig(
        engine="sim",
        model=_model(tmp_path),
        run_dir=tmp_path,
        kv_cache_bytes=80_000_000,
        prefix_caching_hash_algo="sha256_cbor",
        sim_profile="smollm2-cpu",
        extra_args=tuple(extra),
    )
    plan = plan_launch(cfg, 2)
    for r in plan.replicas:
        argv = list(r.argv)
        assert argv[:4] == [sys.executable, "-m", "kvgate", "sim"]
        assert flag_value(argv, "--block-size") == "32"
        assert flag_value(argv, "--num-gpu-blocks") == "108"  # what 80 MB holds in vLLM
        assert flag_value(argv, "--prefix-caching-hash-algo") == "sha256_cbor"
        assert flag_value(argv, "--profile") == "smollm2-cpu"
        assert flag_value(argv, "--max-num-seqs") == "8"
        assert "--disable-uvicorn-access-log" not in argv
        events = json.loads(flag_value(argv, "--kv-events-config") or "{}")
        assert events["topic"] == f"kv@127.0.0.1:{r.port}@smollm2"
    assert any("ignored by the simulator" in n for n in plan.notes)


def test_merge_args_replaces_flags_in_both_spellings() -> None:
    argv, notes = merge_args(
        ["python", "-m", "x", "--a", "1", "--b=2", "--c"], ["--b", "3", "--a=4", "--d"]
    )
    assert argv == ["python", "-m", "x", "--c", "--b", "3", "--a=4", "--d"]
    assert flag_value(argv, "--a") == "4" and flag_value(argv, "--b") == "3"
    assert len(notes) == 2


def test_engine_plan_cli_prints_each_replica(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvgate",
            "engine",
            "plan",
            "--engine",
            "sim",
            "--replicas",
            "2",
            "--model",
            "hf://Qwen/Qwen3-0.6B",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("# replica-") for line in lines) == 2
    assert sum("-m kvgate sim" in line for line in lines) == 2
    assert "kv@127.0.0.1:" in proc.stdout and "@Qwen/Qwen3-0.6B" in proc.stdout
