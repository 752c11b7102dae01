"""GIE conformance's test plugins: the header picks the endpoint, the response names it."""

from __future__ import annotations

from pathlib import Path

from kvgate.config import build_scheduler, load_picker_config
from kvgate.scheduling.types import CycleState, Endpoint, ResponseInfo
from plugins.kit import make, request

CONFIG = (
    Path(__file__).resolve().parents[2]
    / "data/llm-d-configs/gateway-api-inference-extension__conformance_resources_base.yaml"
)
A = Endpoint("a", "10.0.0.1", 8000)
B = Endpoint("b", "10.0.0.2", 8000)
B2 = Endpoint("b2", "10.0.0.2", 8001)
V6 = Endpoint("v6", "fd00::3", 8000)
ALL = [A, B, B2, V6]


def _kept(header: str | None) -> list[str]:
    flt = make("header-based-testing-filter")
    headers = {} if header is None else {"test-epp-endpoint-selection": header}
    return [e.name for e in flt.filter(CycleState(), request(headers=headers), ALL)]


def test_the_header_names_endpoints_by_address_or_address_and_port() -> None:
    assert _kept("10.0.0.2:8000") == ["b"]
    assert _kept("10.0.0.2:8001, 10.0.0.1") == ["b2", "a"]  # header order
    assert _kept("10.0.0.2") == ["b2"]  # a bare address: the last endpoint listed at it
    assert _kept("10.0.0.2:8000,10.0.0.2:8001") == ["b"]  # one endpoint per address
    assert _kept("[fd00::3]:8000") == ["v6"] and _kept("fd00::3") == ["v6"]
    assert _kept(None) == [] and _kept(" ") == [] and _kept("10.9.9.9") == []


def test_the_published_conformance_config_routes_by_header_and_reports_the_endpoint() -> None:
    scheduler = build_scheduler(load_picker_config(CONFIG, env={}))
    req = request(headers={"test-epp-endpoint-selection": "10.0.0.2:8001"})
    result = scheduler.schedule(req, ALL)
    target = result.primary.targets[0]
    assert target.name == "b2"
    info = ResponseInfo(status=200)
    scheduler.response_complete(req, info, target)
    assert info.headers == {"x-conformance-test-served-endpoint": "10.0.0.2:8001"}
