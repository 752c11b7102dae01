"""``kvgate up --engine sim`` with ``spec.prefill``: a P/D LLMInferenceService comes up as
prefill and decode replica sets behind KServe's P/D default scheduler config, and a request
goes through both legs (the decode replica's cached tokens cover the prompt it pulled)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import openai
import yaml

from support.procs import Proc, free_port, kvgate_cmd, wait_until

SEED = Path(str(resources.files("kvgate") / "data" / "examples" / "llm-inference-service.yaml"))
MODEL = "Qwen/Qwen3-0.6B"


def pd_service(tmp_path: Path, *, offload: bool = False) -> Path:
    """The course's file with ``spec.prefill`` and no scheduler config (KServe's P/D default)."""
    data = yaml.safe_load(SEED.read_text())
    del data["spec"]["router"]["scheduler"]
    data["spec"]["prefill"] = {"replicas": 1}
    if offload:
        data["spec"]["kvCacheOffloading"] = {"cpu": "1Gi"}
    path = tmp_path / "pd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def metric(url: str, name: str, label: str = "") -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_pd_service_runs_both_legs(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    port = free_port()
    proc = spawn(
        kvgate_cmd(
            "up",
            str(pd_service(tmp_path, offload=True)),
            "--engine",
            "sim",
            "--port",
            str(port),
            "--run-dir",
            str(tmp_path / "run"),
        ),
        name="up-pd",
    )
    wait_until(
        lambda: "OpenAI base URL" in proc.log() or not proc.alive(),
        timeout_s=40,
        what="kvgate up ready line",
    )
    log = proc.log()
    assert proc.alive(), log
    assert "1 prefill + 1 decode sim replica(s)" in log
    urls = dict(re.findall(r"starting (\w+-\d+) on (http://\S+)", log))
    assert set(urls) == {"decode-0", "prefill-0"}, log
    assert (tmp_path / "run" / "logs" / "decode-0.log").exists()  # logs named by role
    # kvCacheOffloading: 1Gi became the simulator's CPU tier, in blocks of this model's KV
    info = urllib.request.urlopen(f"{urls['decode-0']}/metrics", timeout=5).read().decode()
    assert re.search(r'num_cpu_blocks="\d+"', info), info

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    prompt = "Prefill computes this prompt; decode pulls its KV over NIXL. " * 20
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    # every prompt token but the last arrived from the prefill replica
    assert reply.usage.prompt_tokens_details.cached_tokens == reply.usage.prompt_tokens - 1
    assert metric(urls["prefill-0"], "vllm:request_success_total") >= 1
    assert (
        metric(
            urls["decode-0"],
            "vllm:prompt_tokens_by_source_total",
            'source="external_kv_transfer"',
        )
        >= reply.usage.prompt_tokens - 1
    )
    assert proc.stop() == 0
