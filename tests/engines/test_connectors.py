"""vLLM's KV connectors on the CPU build: what is refused before start, and real P/D over NIXL.

The refusals run against real Pythons (the engine venv's, which has ``nixl``, and kvgate's
own, which has not). The last test is the real-vLLM tier's P/D pair: ``kvgate up`` with an
LLMInferenceService that has ``spec.prefill`` starts a prefill and a decode vLLM replica with
``NixlConnector`` (``kv_both``, host buffers), and ``kvgate serve`` runs both legs; the decode
replica's own counters show the prompt arrived over NIXL instead of being computed there.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.config import load_llm_inference_service
from kvgate.engines import EngineConfig, plan_launch, resolve_model
from kvgate.engines.connectors import cpu_kv_transfer_problem
from kvgate.engines.vllm import engine_venv
from kvgate.errors import ConfigError, EngineError
from kvgate.up.cluster import plan_cluster
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.vllm import engine_skip_reason, post_json, unique_words

NIXL = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'

PD_SERVICE = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata: {name: smol-pd, namespace: test}
spec:
  replicas: 1
  model: {uri: hf://HuggingFaceTB/SmolLM2-135M-Instruct, name: smollm2}
  prefill: {replicas: 1}
"""


def _metric(url: str, name: str, label: str = "") -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(label)}[^}}]*\}} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _engine_python() -> Path:
    reason = engine_skip_reason()
    if reason:
        pytest.skip(reason)
    return engine_venv() / "bin" / "python"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--kv-offloading-size", "1"], "--kv-offloading-size: vLLM's CPU build cannot offload"),
        (
            ["--kv-transfer-config", '{"kv_connector":"OffloadingConnector","kv_role":"kv_both"}'],
            "CPU Offloading is currently only supported on CUDA-alike and XPU GPUs",
        ),
        (
            [
                "--kv-transfer-config",
                '{"kv_connector":"MultiConnector","kv_role":"kv_both","kv_connector_extra_config":'
                '{"connectors":[{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}]}}',
            ],
            "No supported cpu connector found",
        ),
        (
            ["--kv-transfer-config", '{"kv_connector":"P2pNcclConnector","kv_role":"kv_producer"}'],
            "Unsupported connector type",
        ),
        (
            ["--kv-transfer-config", NIXL[:-1] + ',"kv_buffer_device":"cuda"}'],
            "kv_buffer_device 'cuda' does not exist on the CPU build",
        ),
    ],
)
def test_connectors_the_cpu_build_cannot_run_are_refused_in_one_line(
    argv: list[str], expected: str
) -> None:
    problem = cpu_kv_transfer_problem(argv, Path(sys.executable))
    assert problem is not None and expected in problem and "\n" not in problem


def test_nixl_needs_the_nixl_package_in_the_engine_python() -> None:
    # kvgate's own venv has no nixl: the plan says to run `make vllm`.
    with pytest.raises(EngineError, match=r"needs the nixl package .* run `make vllm`"):
        plan_launch(
            EngineConfig(
                engine="vllm",
                model=resolve_model("smollm2", name="smollm2"),
                run_dir=Path("unused"),
                device="cpu",
                vllm_python=Path(sys.executable),
                extra_args=("--kv-transfer-config", NIXL),
            ),
            1,
        )
    # The engine venv from `make vllm` has it; the ExampleConnector needs nothing.
    python = _engine_python()
    assert cpu_kv_transfer_problem(["--kv-transfer-config", NIXL], python) is None
    example = '{"kv_connector":"ExampleConnector","kv_role":"kv_both"}'
    assert cpu_kv_transfer_problem(["--kv-transfer-config", example], python) is None


def test_pd_service_with_cpu_offloading_names_the_field(tmp_path: Path) -> None:
    _engine_python()
    path = tmp_path / "pd.yaml"
    path.write_text(PD_SERVICE + "  kvCacheOffloading: {cpu: 1Gi}\n")
    base = EngineConfig(
        engine="vllm",
        model=resolve_model("smollm2", name="smollm2"),
        run_dir=tmp_path,
        device="cpu",
    )
    with pytest.raises(ConfigError) as info:
        plan_cluster(load_llm_inference_service(path), base)
    assert str(info.value).startswith(f"{path}: spec.kvCacheOffloading: vLLM's CPU build")
    # The same flag in the prefill workload's own VLLM_ADDITIONAL_ARGS names that workload.
    path.write_text(
        PD_SERVICE.replace(
            "prefill: {replicas: 1}",
            "prefill:\n    replicas: 1\n    template: {containers: [{name: main, env: "
            "[{name: VLLM_ADDITIONAL_ARGS, value: --kv-offloading-size 2}]}]}",
        )
    )
    with pytest.raises(ConfigError) as info:
        plan_cluster(load_llm_inference_service(path), base)
    where = f"{path}: spec.prefill.template VLLM_ADDITIONAL_ARGS: --kv-offloading-size: "
    assert str(info.value).startswith(where)


@pytest.mark.vllm
@pytest.mark.timeout(540)  # two vLLM start-ups on a busy CPU
def test_real_pd_pair_moves_the_prompt_over_nixl(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    _engine_python()
    service = tmp_path / "pd.yaml"
    service.write_text(PD_SERVICE)
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "up", str(service), "--port", str(port), "--run-dir", str(tmp_path / "run"),
            "--no-request-log", "--ready-timeout", "400",
        ),
        name="up-vllm-pd",
    )  # fmt: skip
    wait_until(
        lambda: "OpenAI base URL" in proc.log() or not proc.alive(),
        timeout_s=450,
        what="kvgate up with a real vLLM P/D pair ready",
    )
    log = proc.log()
    assert proc.alive(), log[-4000:]
    assert "1 prefill + 1 decode vllm replica(s)" in log
    urls = dict(re.findall(r"starting (\w+-\d+) on (http://\S+)", log))
    assert set(urls) == {"prefill-0", "decode-0"}, log
    gateway = f"http://127.0.0.1:{port}"

    def both_in_rotation() -> bool:  # the gateway is up before its first scrape of each
        with urllib.request.urlopen(gateway + "/ready", timeout=5) as resp:
            return bool(json.loads(resp.read()).get("endpoints_in_rotation") == 2)

    wait_until(both_in_rotation, timeout_s=60, what="prefill and decode endpoints in rotation")
    body = {"model": "smollm2", "prompt": unique_words("real-pd", 300), "max_tokens": 4}
    status, answer = post_json(gateway + "/v1/completions", body)
    assert status == 200, answer
    prompt_tokens = int(answer["usage"]["prompt_tokens"])
    whole_blocks = (prompt_tokens - 1) // 32 * 32

    assert _metric(gateway, "kvgate_pd_prefill_total", 'outcome="ok"') == 1
    # The prefill replica computed the prompt and generated its one token ...
    prefill = urls["prefill-0"]
    assert _metric(prefill, "vllm:prompt_tokens_by_source_total", "local_compute") == prompt_tokens
    assert _metric(prefill, "vllm:generation_tokens_total") == 1
    # ... and the decode replica pulled it over NIXL: at most the last partial block is its own.
    decode = urls["decode-0"]
    pulled = _metric(decode, "vllm:prompt_tokens_by_source_total", "external_kv_transfer")
    assert pulled >= whole_blocks > 0
    assert _metric(decode, "vllm:prompt_tokens_by_source_total", "local_compute") < 32
    assert _metric(decode, "vllm:external_prefix_cache_hits_total") == pulled
    assert proc.stop(timeout_s=60) == 0
