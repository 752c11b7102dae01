from __future__ import annotations

from kvgate.sidecar.encode import encode_parts, encoder_body, with_ec_params

CAT = {"type": "image_url", "image_url": {"url": "http://img/cat.png"}}
WAV = {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}


def test_each_part_once_per_url_in_a_one_token_request_of_its_own() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, CAT, WAV, CAT, WAV]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 50,
        "temperature": 0.3,
    }
    parts = encode_parts(body)
    assert parts == [CAT, WAV, WAV]  # inline audio has no URL to deduplicate by, as in llm-d
    leg = encoder_body(body, CAT)
    assert leg["messages"] == [{"role": "user", "content": [CAT]}]
    assert (leg["max_tokens"], leg["max_completion_tokens"], leg["stream"]) == (1, 1, False)
    assert "stream_options" not in leg and leg["temperature"] == 0.3
    assert body["stream"] is True  # the client's body is left alone
    assert "max_completion_tokens" not in encoder_body({"messages": []}, CAT)


def test_encoder_params_go_on_to_the_next_leg() -> None:
    assert with_ec_params({"model": "m"}, {"k": 1}) == {
        "model": "m",
        "ec_transfer_params": {"k": 1},
    }
    assert with_ec_params({"model": "m"}, None) == {"model": "m"}
    assert encode_parts({"messages": "x"}) == []
