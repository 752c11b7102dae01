from __future__ import annotations

import pytest
import xxhash

from kvgate.errors import BadRequestError
from kvgate.openai.requests import build_request
from kvgate.scheduling.types import Request


def _chat(content: object) -> Request:
    return build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": content}]}, {}
    )


def test_every_multimodal_part_is_parsed_and_hashed_as_llm_d_estimates() -> None:
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "video_url", "video_url": {"url": "http://v/1.mp4"}},
        {"type": "audio_url", "audio_url": {"url": "http://a/1.wav"}},
        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
        {"type": "image_url", "image_url": "http://i/short-form.png"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    items = _chat(content).mm_items
    assert [i.modality for i in items] == ["image", "video", "audio", "audio", "image", "image"]
    # llm-d's estimate backend: xxh64 of the URL (or audio data + format), hex unpadded
    assert items[0].mm_hash == format(xxhash.xxh64_intdigest(b"data:image/png;base64,AAAA"), "x")
    assert items[3].mm_hash == format(xxhash.xxh64_intdigest(b"UklGwav"), "x")
    assert items[0].mm_hash == items[5].mm_hash  # repeats kept, same hash
    assert items[1].part is content[2]


def test_text_requests_carry_no_items() -> None:
    assert _chat("plain").mm_items == ()
    assert _chat([{"type": "text", "text": "x"}]).mm_items == ()
    assert build_request("completions", {"model": "m", "prompt": "x"}, {}).mm_items == ()


def test_a_part_without_its_url_is_a_400_naming_it() -> None:
    with pytest.raises(BadRequestError) as err:
        _chat([{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {}}])
    assert err.value.param == "messages[0].content[1].image_url.url"
