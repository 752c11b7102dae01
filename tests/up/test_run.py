"""``kvgate up``: spec.model.lora reaches the engines (vLLM and the simulator)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from kvgate.config import load_llm_inference_service
from kvgate.engines import EngineConfig, plan_launch, resolve_model
from kvgate.errors import ConfigError
from kvgate.up.run import lora_args

SEED = Path(str(resources.files("kvgate") / "data" / "examples" / "llm-inference-service.yaml"))
LORA = "    lora:\n      adapters:\n      - {name: sql, uri: hf://org/sql-lora}\n      - {name: local, uri: file:///srv/lora}\n"


def with_lora(tmp_path: Path, adapters: str = LORA) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(
        SEED.read_text().replace(
            "    name: Qwen/Qwen3-0.6B\n", "    name: Qwen/Qwen3-0.6B\n" + adapters
        )
    )
    return path


def test_lora_adapters_become_engine_flags(tmp_path: Path) -> None:
    svc = load_llm_inference_service(with_lora(tmp_path))
    modules = ["sql=org/sql-lora", "local=/srv/lora"]
    assert lora_args(svc, "vllm") == ["--enable-lora", "--lora-modules", *modules]
    assert lora_args(svc, "sim") == ["--lora-modules", *modules]
    config = EngineConfig(
        engine="sim",
        model=resolve_model("smollm2", name="smollm2", require_local=False),
        run_dir=tmp_path,
        extra_args=tuple(lora_args(svc, "sim")),
    )
    (replica,) = plan_launch(config, 1).replicas
    argv = list(replica.argv)
    assert argv[argv.index("--lora-modules") + 1 : argv.index("--lora-modules") + 3] == modules


def test_a_volume_adapter_is_a_one_line_error(tmp_path: Path) -> None:
    path = with_lora(tmp_path, "    lora:\n      adapters:\n      - {name: v, uri: pvc://c/p}\n")
    with pytest.raises(ConfigError, match=r"adapters\[0\]\.uri"):
        lora_args(load_llm_inference_service(path), "vllm")
