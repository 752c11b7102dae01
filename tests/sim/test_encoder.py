from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.openai.multimodal import mm_items
from kvgate.scheduling.types import MMItem
from kvgate.sim.encoder import EncoderCache, parse_ec_transfer_config

EC = '{"ec_connector":"ECExampleConnector","ec_role":"%s","ec_connector_extra_config":{"shared_storage_path":"%s"}}'


def _parts(*urls: str) -> tuple[MMItem, ...]:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return mm_items([{"role": "user", "content": content}])


def test_each_distinct_part_costs_encode_ms_once_then_comes_from_the_cache() -> None:
    enc = EncoderCache(encode_ms=20.0, capacity=2)
    assert enc.prepare(_parts("a", "b", "a")) == pytest.approx(0.040)
    assert enc.prepare(_parts("a")) == 0.0
    assert enc.prepare(_parts("c")) == pytest.approx(0.020)
    assert enc.prepare(_parts("b")) == pytest.approx(0.020)  # evicted: capacity 2
    assert enc.counts == {"encoded": 4, "encoder_cache": 1, "ec_store": 0}


def test_the_producer_fills_the_store_and_the_consumer_loads_from_it(tmp_path: Path) -> None:
    producer = EncoderCache(20.0, 8, parse_ec_transfer_config(EC % ("ec_producer", tmp_path)))
    consumer = EncoderCache(20.0, 8, parse_ec_transfer_config(EC % ("ec_consumer", tmp_path)))
    assert producer.prepare(_parts("a")) > 0
    assert consumer.prepare(_parts("a", "b")) == pytest.approx(0.020)
    assert consumer.counts == {"encoded": 1, "encoder_cache": 0, "ec_store": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "invalid JSON"),
        ('{"ec_connector":"X","ec_role":"ec_producer"}', "ec_connector: expected"),
        ('{"ec_connector":"ECExampleConnector","ec_role":"both"}', "ec_role: expected"),
        ('{"ec_connector":"ECExampleConnector","ec_role":"ec_producer"}', "shared_storage_path"),
        ('{"ec_connector":"ECExampleConnector","ec_buffer_device":"cuda"}', "not simulated"),
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ec_transfer_config(text)
