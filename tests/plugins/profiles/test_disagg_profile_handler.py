from __future__ import annotations

import pytest

from kvgate.errors import ConfigError, SchedulingFailedError
from kvgate.openai.requests import build_request
from kvgate.scheduling.types import (
    HEADER_ENCODERS,
    HEADER_PREFILLER,
    ROLE_LABEL,
    Endpoint,
    Metrics,
    Request,
)
from plugins.kit import request
from plugins.profiles.pd_kit import DECODE, PREFILL, pd_config, pd_scheduler

ALWAYS = "- type: always-disagg-pd-decider"


def _handler(params: str) -> str:
    return f"- type: disagg-profile-handler\n  parameters: {params}"


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        pd_scheduler(text)
    first = err.value.problems[0]
    return f"{first.path}: {first.message}"


def test_decider_approves_prefill_and_decode_stays_primary() -> None:
    sched = pd_scheduler(
        pd_config(_handler("{deciders: {prefill: always-disagg-pd-decider}}"), ALWAYS)
    )
    req = request("hello")
    result = sched.schedule(req, [DECODE, PREFILL])
    assert result.primary_profile_name == "decode"
    assert result.primary.targets[0] is DECODE
    assert result.profile_results["prefill"] is not None
    assert sched.pre_request(req, result)[HEADER_PREFILLER] == "10.0.0.2:8002"


def test_without_a_decider_every_request_is_decode_only() -> None:
    sched = pd_scheduler(pd_config("- type: disagg-profile-handler"))
    req = request("hello")
    result = sched.schedule(req, [DECODE, PREFILL])
    assert sorted(result.profile_results) == ["decode"]
    assert HEADER_PREFILLER not in sched.pre_request(req, result)


def test_flat_legacy_parameters_load_as_llm_d_wide_ep_writes_them() -> None:
    sched = pd_scheduler(
        pd_config(_handler("{deciderPluginName: always-disagg-pd-decider}"), ALWAYS)
    )
    result = sched.schedule(request("x"), [DECODE, PREFILL])
    assert sorted(result.profile_results) == ["decode", "prefill"]


def test_no_decode_endpoint_fails_with_429() -> None:
    sched = pd_scheduler(
        pd_config(_handler("{deciders: {prefill: always-disagg-pd-decider}}"), ALWAYS)
    )
    with pytest.raises(SchedulingFailedError, match="decode workers"):
        sched.schedule(request("x"), [PREFILL])


def test_prefill_failure_leaves_decode_only() -> None:
    sched = pd_scheduler(
        pd_config(_handler("{deciders: {prefill: always-disagg-pd-decider}}"), ALWAYS)
    )
    result = sched.schedule(request("x"), [DECODE])
    assert sorted(result.profile_results) == ["decode"]


def test_prefill_first_runs_prefill_then_decode() -> None:
    sched = pd_scheduler(pd_config(_handler("{stageOrder: prefill-first}")))
    result = sched.schedule(request("x"), [DECODE, PREFILL])
    assert sorted(result.profile_results) == ["decode", "prefill"]
    assert result.primary_profile_name == "decode"


@pytest.mark.parametrize(
    ("params", "decider", "expected"),
    [
        (
            "{deciders: {prefill: nope}}",
            "",
            "plugins[disagg-profile-handler].parameters.deciders.prefill: no plugin named 'nope'",
        ),
        (
            "{deciders: {prefill: max-score-picker}}",
            "",
            "plugins[disagg-profile-handler].parameters.deciders.prefill: plugin "
            "'max-score-picker' (type max-score-picker) is not a decider",
        ),
        (
            "{deciders: {prefill: always-disagg-pd-decider}, deciderPluginName: x}",
            ALWAYS,
            "plugins[disagg-profile-handler].parameters: use one parameter format",
        ),
        (
            "{stageOrder: sideways}",
            "",
            "plugins[disagg-profile-handler].parameters.stageOrder: expected 'decode-first'",
        ),
        (
            "{stageOrder: prefill-first, deciders: {prefill: always-disagg-pd-decider}}",
            ALWAYS,
            "plugins[disagg-profile-handler].parameters.deciders.prefill: a prefill decider is "
            "not supported in prefill-first",
        ),
        (
            "{profiles: {decode: d, extra: e}}",
            "",
            "plugins[disagg-profile-handler].parameters.profiles.extra: unknown parameter",
        ),
        (
            "{deciders: {encode: nope}}",
            "",
            "plugins[disagg-profile-handler].parameters.deciders.encode: no plugin named 'nope'",
        ),
        (
            "{deciders: {encode: prefill-filter}}",
            "",
            "plugins[disagg-profile-handler].parameters.deciders.encode: plugin "
            "'prefill-filter' (type prefill-filter) is not a decider",
        ),
    ],
)
def test_config_errors_name_the_parameter(params: str, decider: str, expected: str) -> None:
    assert _problem(pd_config(_handler(params), decider)).startswith(expected)


ENCODE = Endpoint("enc", "10.0.0.3", 8003, {ROLE_LABEL: "encode"}, Metrics())
MM = "- type: always-disagg-multimodal-decider"
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "http://img/cat.png"}},
        ],
    }
]


def _epd(params: str, *deciders: str) -> str:
    """pd_config plus an encode profile (encode-filter only, as llm-d's sim-e-p-d sample)."""
    text = pd_config(_handler(params), "\n".join(deciders), "- type: encode-filter")
    return text + "- name: encode\n  plugins: [{pluginRef: encode-filter}]\n"


def _mm_request() -> Request:
    return build_request("chat", {"model": "m", "messages": IMAGE}, {})


@pytest.mark.parametrize("order", ["decode-first", "prefill-first"])
def test_encode_stage_runs_for_multimodal_requests_only(order: str) -> None:
    prefill = "" if order == "prefill-first" else ", prefill: always-disagg-pd-decider"
    sched = pd_scheduler(
        _epd(
            f"{{stageOrder: {order}, deciders: {{encode: always-disagg-multimodal-decider{prefill}}}}}",
            MM,
            ALWAYS,
        )
    )
    req = _mm_request()
    result = sched.schedule(req, [DECODE, PREFILL, ENCODE])
    assert sorted(result.profile_results) == ["decode", "encode", "prefill"]
    assert result.primary_profile_name == "decode"
    headers = sched.pre_request(req, result)
    assert headers[HEADER_ENCODERS] == "10.0.0.3:8003"
    assert headers[HEADER_PREFILLER] == "10.0.0.2:8002"
    text = request(messages=[{"role": "user", "content": "hi"}])
    result = sched.schedule(text, [DECODE, PREFILL, ENCODE])
    assert "encode" not in result.profile_results
    assert HEADER_ENCODERS not in sched.pre_request(text, result)


def test_without_an_encoder_the_request_goes_without_the_encode_stage() -> None:
    sched = pd_scheduler(_epd("{deciders: {encode: always-disagg-multimodal-decider}}", MM))
    req = _mm_request()
    result = sched.schedule(req, [DECODE, PREFILL])
    assert sorted(result.profile_results) == ["decode"]
    assert HEADER_ENCODERS not in sched.pre_request(req, result)


def test_flat_encode_decider_parameter_loads() -> None:
    sched = pd_scheduler(_epd("{encodeDeciderPluginName: always-disagg-multimodal-decider}", MM))
    result = sched.schedule(_mm_request(), [DECODE, PREFILL, ENCODE])
    assert sorted(result.profile_results) == ["decode", "encode"]
