"""``kvgate sim`` flags -> settings: profile precedence, vLLM's --kv-events-config, LoRA
modules, and errors that name the flag."""

from __future__ import annotations

import argparse
import json

import pytest

from kvgate.sim.cli import register
from kvgate.sim.config import settings_from_args
from kvgate.sim.profiles import load_profile, profile_names
from kvgate.sim.publisher import binds, parse_kv_events_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


def test_flags_override_the_profile() -> None:
    s = settings_from_args(
        parse("--profile", "llama-3.1-8b-h100", "--block-size", "32", "--max-num-seqs", "8")
    )
    base = load_profile("llama-3.1-8b-h100")
    assert s.profile.block_size == 32 and s.profile.max_num_seqs == 8
    assert s.profile.num_gpu_blocks == base.num_gpu_blocks
    assert s.profile.latency == base.latency
    assert {"qwen3-0.6b-h100", "llama-3.1-8b-h100"} <= set(profile_names())


def test_max_model_len_is_capped_to_the_cache_unless_asked_for() -> None:
    s = settings_from_args(parse("--num-gpu-blocks", "10"))
    assert s.profile.max_model_len == 160
    with pytest.raises(ValueError, match="--max-model-len 4096 does not fit the KV cache"):
        settings_from_args(parse("--num-gpu-blocks", "10", "--max-model-len", "4096"))


def test_kv_events_config_as_vllm_takes_it() -> None:
    cfg = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",
        "replay_endpoint": "tcp://*:5558",
        "topic": "kv@10.0.0.1:8000@m",
        "buffer_steps": 50,
    }
    s = settings_from_args(parse("--kv-events-config", json.dumps(cfg)))
    assert s.kv_events_endpoint == "tcp://*:5557" and s.kv_events_replay_endpoint == "tcp://*:5558"
    assert s.kv_events_topic == "kv@10.0.0.1:8000@m" and s.kv_events_buffer_steps == 50
    off = settings_from_args(
        parse("--kv-events-config", json.dumps({**cfg, "enable_kv_cache_events": False}))
    )
    assert off.kv_events_endpoint is None
    assert settings_from_args(parse()).kv_events_endpoint is None  # events are off by default
    with pytest.raises(ValueError, match="unknown field"):
        parse_kv_events_config('{"endpoit": "tcp://*:1"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_kv_events_config("{")


def test_bind_or_connect_as_vllm() -> None:
    assert binds("tcp://*:5557") and binds("tcp://[::]:5557") and binds("ipc:///tmp/x")
    assert binds("inproc://x")
    assert not binds("tcp://127.0.0.1:5557") and not binds("tcp://collector:5557")


def test_lora_modules_and_bad_flags() -> None:
    s = settings_from_args(
        parse("--lora-modules", "a=/p/a", '{"name": "b", "path": "/p/b"}', "--max-loras", "2")
    )
    assert [(a.name, a.path, a.lora_id) for a in s.lora_modules] == [
        ("a", "/p/a", 1),
        ("b", "/p/b", 2),
    ]
    with pytest.raises(ValueError, match="--lora-modules: expected name=path"):
        settings_from_args(parse("--lora-modules", "nopath"))
    with pytest.raises(ValueError, match="--failure-kinds"):
        settings_from_args(parse("--failure-kinds", "500,explode"))
    with pytest.raises(ValueError, match="unknown simulator profile 'h200'"):
        settings_from_args(parse("--profile", "h200"))
    with pytest.raises(ValueError, match="--speed must be positive"):
        settings_from_args(parse("--speed", "0"))
    assert settings_from_args(parse("--failure-rate", "20")).failure_rate == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"--emit-lead-max-ms must be within 0\.\.1000, got -1"):
        settings_from_args(parse("--emit-lead-max-ms", "-1"))
    assert settings_from_args(parse("--emit-lead-max-ms", "0")).emit_lead_max_s == 0.0
    assert settings_from_args(parse()).emit_lead_max_s == pytest.approx(0.005)


def test_read_timeout_must_be_positive() -> None:
    assert settings_from_args(parse("--read-timeout", "2.5")).read_timeout_s == 2.5
    assert settings_from_args(parse()).read_timeout_s == 30.0
    with pytest.raises(ValueError, match=r"--read-timeout must be > 0 seconds, got 0\.0"):
        settings_from_args(parse("--read-timeout", "0"))
