"""P/D and CPU-tier policies of ``kvgate bench compare``: names, configs and cluster plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgate.bench import variants
from kvgate.bench.compare import ClusterSpec, _plan
from kvgate.config.loader import load_picker_config_text


def test_policy_names() -> None:
    assert variants.parse_policy("pd") == variants.PolicyVariant("pd", "pd", pd=True)
    tier = variants.parse_policy("precise+cpu-tier")
    assert (tier.base, tier.cpu_tier, tier.pd) == ("precise", True, False)
    # other policies with a '+' stay whole
    assert variants.parse_policy("llm-d-default+flow-control").base == "llm-d-default+flow-control"


def test_tiered_config_is_llm_d_guide_shape_and_loads() -> None:
    variant = variants.parse_policy("llm-d-default+cpu-tier")
    text = variants.variant_config(variant, gpu_blocks=1500, cpu_blocks=4000, block_size=16)
    assert text is not None
    config = load_picker_config_text(text, "<tiered>")
    names = {p.name for p in config.plugins}
    assert {"gpu-prefix-cache-scorer", "cpu-prefix-cache-scorer", "cpuPrefixProducer"} <= names
    producer = next(p for p in config.plugins if p.name == "cpuPrefixProducer")
    # GPU + CPU blocks of 16 tokens, counted in the producer's 64-token blocks
    assert producer.parameters["lruCapacityPerServer"] == (1500 + 4000) * 16 // 64
    assert (
        variants.variant_config(
            variants.parse_policy("precise+cpu-tier"), gpu_blocks=1, cpu_blocks=1, block_size=16
        )
        is None
    )  # precise reads the CPU tier from KV events: its own config


def test_plans_give_roles_and_cpu_tier(tmp_path: Path) -> None:
    cluster = ClusterSpec(replicas=4, num_gpu_blocks=100)
    tier = variants.sim_cpu_tier_args(variants.parse_policy("precise+cpu-tier"), 400)
    plan = _plan(cluster, tmp_path, "tcp://127.0.0.1:1", tuple(tier))
    assert all("--kv-offload-blocks" in r.argv for r in plan.replicas)
    roles = variants.pd_roles(4, None)
    assert roles == ["prefill", "prefill", "decode", "decode"]
    pd = variants.with_pd_roles(plan, roles, "nvlink")
    kv_roles = [json.loads(r.argv[r.argv.index("--kv-transfer-config") + 1]) for r in pd.replicas]
    assert [k["kv_role"] for k in kv_roles] == ["kv_producer"] * 2 + ["kv_consumer"] * 2
    assert {k["kv_connector_extra_config"]["sim_link"] for k in kv_roles} == {"nvlink"}
    assert [r.name for r in pd.replicas] == ["prefill-0", "prefill-1", "decode-2", "decode-3"]
    with pytest.raises(variants.VariantError, match="--prefill-replicas"):
        variants.pd_roles(4, 4)
    with pytest.raises(variants.VariantError, match="--cpu-offload-blocks"):
        variants.sim_cpu_tier_args(variants.parse_policy("precise+cpu-tier"), None)
