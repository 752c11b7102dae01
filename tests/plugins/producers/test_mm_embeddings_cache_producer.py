from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config import build_scheduler, load_picker_config
from kvgate.config.build import trial_context
from kvgate.errors import PluginParameterError
from kvgate.openai.requests import build_request
from kvgate.scheduling import data
from kvgate.scheduling.data import DataKey, EncoderCacheMatchInfo
from kvgate.scheduling.types import (
    ROLE_LABEL,
    CycleState,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from plugins.kit import endpoint, make

A, B = endpoint("a"), endpoint("b")
KEY = DataKey(data.ENCODER_CACHE_MATCH_INFO, "mm-embeddings-cache-producer")


def _images(*urls: str) -> Request:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": parts}]}, {}
    )


def _matches(producer: object, req: Request) -> dict[str, tuple[int, int]]:
    producer.produce(CycleState(), req, [A, B])  # type: ignore[attr-defined]
    found = data.per_endpoint(req, KEY, EncoderCacheMatchInfo) or {}
    return {n: (len(i.matched), i.num_request_items) for n, i in found.items()}


def _routed(producer: object, req: Request, target: object) -> None:
    result = SchedulingResult({"decode": ProfileRunResult((target,))}, "decode")  # type: ignore[arg-type]
    producer.pre_request(req, result, {})  # type: ignore[attr-defined]


def test_learns_where_each_item_went_and_reports_matches_per_endpoint() -> None:
    producer = make("mm-embeddings-cache-producer")
    first = _images("http://x/1.png", "http://x/2.png", "http://x/1.png")
    assert _matches(producer, first) == {"a": (0, 2), "b": (0, 2)}  # repeats count once
    _routed(producer, first, A)
    assert _matches(producer, _images("http://x/2.png", "http://x/3.png")) == {
        "a": (1, 2),
        "b": (0, 2),
    }
    producer.endpoints_removed(["a"])
    assert _matches(producer, _images("http://x/1.png")) == {"a": (0, 1), "b": (0, 1)}


def test_text_requests_produce_nothing() -> None:
    producer = make("mm-embeddings-cache-producer")
    text = build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, {}
    )
    producer.produce(CycleState(), text, [A, B])
    assert text.produced == {}


def test_lru_holds_cache_size_over_two_mib_items() -> None:
    producer = make("mm-embeddings-cache-producer", {"cacheSizeInMBPerServer": 6})
    assert producer.index.capacity == 3
    for i in range(5):
        _routed(producer, _images(f"http://x/{i}.png"), A)
    assert producer.index.size("a") == 3
    assert _matches(producer, _images("http://x/0.png", "http://x/4.png"))["a"] == (1, 2)


@pytest.mark.parametrize(
    ("params", "capacity"),
    [({}, 2048), ({"cacheSizeInMBPerServer": 0}, 2048), ({"cacheSizeInMB": 2048}, 1024)],
)
def test_cache_size_defaults_and_the_samples_name(params: dict[str, int], capacity: int) -> None:
    assert make("mm-embeddings-cache-producer", params).index.capacity == capacity


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(PluginParameterError, match="cacheSize"):
        make("mm-embeddings-cache-producer", {"cacheSize": 10})


def test_llm_d_sample_config_sends_an_image_back_where_it_was_encoded() -> None:
    """llm-d's epp-mm-embeddings-cache-config.yaml, verbatim: with equal queues and no
    prefix match, the encoder-cache scorer (weight 4) sends a repeated image to the endpoint
    that took it first, and a new image anywhere."""
    config = load_picker_config(
        Path(__file__).resolve().parents[2]
        / "data"
        / "llm-d-configs"
        / "llm-d-router__deploy_config_epp-mm-embeddings-cache-config.yaml",
        env={},
    )
    scheduler = build_scheduler(config, trial_context())
    pool = [endpoint(f"d{i}", {ROLE_LABEL: "decode"}) for i in range(4)]
    first = _images("http://x/owl.png")
    result = scheduler.schedule(first, pool)
    scheduler.pre_request(first, result)
    for i in range(8):
        again = _images("http://x/owl.png")
        again.request_id = f"r{i}"
        assert scheduler.schedule(again, pool).target is result.target
