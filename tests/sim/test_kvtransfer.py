"""``--kv-transfer-config`` parsing and the transfer-time model (the legs themselves run in
tests/e2e/test_pd_sim.py through real replicas)."""

from __future__ import annotations

import pytest

from kvgate.sim.kvtransfer import LINK_PRESETS, parse_kv_transfer_config


def test_vllm_shape_with_link_preset_and_side_channel_from_env() -> None:
    cfg = parse_kv_transfer_config(
        '{"kv_connector":"NixlConnector","kv_role":"kv_both",'
        '"kv_connector_extra_config":{"sim_link":"nvlink"}}',
        env={"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.1.2.3", "VLLM_NIXL_SIDE_CHANNEL_PORT": "5601"},
        default_engine_id="e0",
    )
    assert cfg.is_producer and cfg.is_consumer
    assert (cfg.gbytes_per_s, cfg.fixed_ms) == (LINK_PRESETS["nvlink"].gbytes_per_s, 0.5)
    params = cfg.producer_params("r1", [4, 5])
    assert params == {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [4, 5],
        "remote_engine_id": "e0",
        "remote_request_id": "r1",
        "remote_host": "10.1.2.3",
        "remote_port": 5601,
        "tp_size": 1,
    }


def test_transfer_time_is_fixed_plus_bytes_over_bandwidth() -> None:
    cfg = parse_kv_transfer_config(
        '{"kv_connector":"NixlConnector","kv_role":"kv_consumer",'
        '"kv_connector_extra_config":{"sim_link_gbps":10,"sim_transfer_fixed_ms":1}}',
        env={},
    )
    # 1000 tokens x 100 kB = 100 MB over 10 GB/s = 10 ms, + 1 ms
    assert cfg.transfer_s(1000, 100_000) == pytest.approx(0.011)
    assert cfg.transfer_s(0, 100_000) == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}', "kv_connector: expected"),
        ('{"kv_connector":"NixlConnector","kv_role":"both"}', "kv_role: expected one of"),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_ip":"x"}',
            "kv_ip: not simulated",
        ),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both",'
            '"kv_connector_extra_config":{"sim_link":"pcie"}}',
            "kv_connector_extra_config.sim_link: expected one of nvlink, rdma",
        ),
        ("[1]", "expected a JSON object"),
    ],
)
def test_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--kv-transfer-config: .*" + message):
        parse_kv_transfer_config(text, env={})
