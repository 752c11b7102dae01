"""token-producer: the estimate backend's packing, real token ids, idempotence, parameters."""

from __future__ import annotations

import logging

import pytest

from kvgate.errors import PluginParameterError
from kvgate.kvcache.tokenize import Tokenizer, builtin_tokenizer_dir
from kvgate.plugins.registry import default_registry
from kvgate.scheduling import data
from kvgate.scheduling.types import CycleState
from plugins.kit import make, request

TYPE = "token-producer"
#: A modelName whose tokenizer is on disk (a model folder's path is a model name too).
MODEL = str(builtin_tokenizer_dir())


def test_estimate_packs_four_bytes_per_token_little_endian() -> None:
    p = make(TYPE)
    req = request("abcdefghi")  # 9 bytes: two whole tokens
    p.produce(CycleState(), req, [])
    prompt = data.tokenized(req)
    assert prompt is not None and prompt.estimated
    assert prompt.token_ids == (
        int.from_bytes(b"abcd", "little"),
        int.from_bytes(b"efgh", "little"),
    )


def test_model_backend_tokenizes_in_process_and_warns_about_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        p = make(TYPE, {"modelName": MODEL, "vllm": {"url": "http://render:8000", "timeout": "2s"}})
    assert "not contacted" in caplog.text
    req = request("Hello world")
    p.produce(CycleState(), req, [])
    prompt = data.tokenized(req)
    assert prompt is not None and not prompt.estimated
    assert list(prompt.token_ids) == Tokenizer.default().encode("Hello world")
    assert req.token_ids == prompt.token_ids  # shared with every other plugin


def test_inference_schedulers_vllm_http_is_the_older_name_of_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        p = make(TYPE, {"modelName": MODEL, "vllm": {"http": "http://render:8000"}})
    assert "vllm.http http://render:8000 not contacted" in caplog.text
    req = request("Hello world")
    p.produce(CycleState(), req, [])
    assert list(req.token_ids or ()) == Tokenizer.default().encode("Hello world")
    with pytest.raises(PluginParameterError) as err:
        make(TYPE, {"vllm": {"http": "http://a:1", "url": "http://a:1"}})
    assert err.value.field == "vllm.http"


def test_the_first_token_producer_wins() -> None:
    estimate, real = make(TYPE, name="est"), make(TYPE, {"modelName": MODEL}, name="real")
    req = request("Hello world")
    estimate.produce(CycleState(), req, [])
    real.produce(CycleState(), req, [])
    prompt = data.tokenized(req)
    assert prompt is not None and prompt.estimated


def test_legacy_name_and_rejected_parameters() -> None:
    assert default_registry().canonical("tokenizer") == TYPE
    for params, field in (
        ({"vllm": {"url": "unix:/x"}}, "vllm.url"),
        ({"vllm": {"timeout": "soon"}}, "vllm.timeout"),
        ({"vllm": {"http": "unix:/x"}}, "vllm.http"),
        ({"estimate": {"image": {"mode": "static"}}}, "estimate.image"),
        ({"udsTokenizerConfig": {"socket": "/x"}}, "udsTokenizerConfig.socket"),
    ):
        with pytest.raises(PluginParameterError) as err:
            make(TYPE, params)
        assert err.value.field == field
