from __future__ import annotations

from typing import Any

from kvgate.openai.requests import build_request
from plugins.kit import endpoint, make

DECODE = endpoint("d")


def _chat(*content: Any) -> Any:
    return build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": list(content)}]}, {}
    )


def test_encodes_only_requests_with_an_image_video_or_audio_part() -> None:
    decider = make("always-disagg-multimodal-decider")
    text = {"type": "text", "text": "hi"}
    assert not decider.disaggregate(_chat(text), DECODE)
    assert not decider.disaggregate(
        build_request("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, {}),
        DECODE,
    )
    for part in (
        {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
        {"type": "video_url", "video_url": {"url": "http://x/a.mp4"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ):
        assert decider.disaggregate(_chat(text, part), DECODE)
        assert decider.disaggregate(_chat(part), None)  # prefill-first: no decode pick yet
