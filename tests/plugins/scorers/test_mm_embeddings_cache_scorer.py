from __future__ import annotations

from kvgate.openai.requests import build_request
from kvgate.scheduling.data import DataKey, EncoderCacheMatchInfo
from kvgate.scheduling.types import CycleState, ProfileRunResult, SchedulingResult
from plugins.kit import ctx, endpoint, make, score

A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def test_scores_the_share_of_request_items_an_endpoint_holds() -> None:
    c = ctx()
    producer = make("mm-embeddings-cache-producer", c=c, name="mm")
    scorer = make("mm-embeddings-cache-scorer", {"producerName": "mm"}, c=c)
    assert scorer.consumes() == (DataKey("MultiModalEncoderCacheMatchInfoKey", "mm"),)
    parts = [{"type": "image_url", "image_url": {"url": f"http://x/{i}"}} for i in (1, 2)]
    seen = build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": parts[:1]}]}, {}
    )
    producer.pre_request(seen, SchedulingResult({"d": ProfileRunResult((A,))}, "d"), {})
    req = build_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": parts}]}, {}
    )
    producer.produce(CycleState(), req, [A, B])
    assert score(scorer, [A, B, C], req) == {"a": 0.5, "b": 0.0, "c": 0.0}
    assert EncoderCacheMatchInfo((), 0).ratio == 0.0


def test_text_requests_score_zero_everywhere() -> None:
    scorer = make("mm-embeddings-cache-scorer")
    assert scorer.consumes() == (
        DataKey("MultiModalEncoderCacheMatchInfoKey", "mm-embeddings-cache-producer"),
    )
    assert score(scorer, [A, B]) == {"a": 0.0, "b": 0.0}
