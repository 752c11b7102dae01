"""Health of model servers that speak only gRPC, for the scraper's rotation.

The scraper probes ``GET /health`` over HTTP/1.1, which a gRPC-only server (vLLM's
``vllm.entrypoints.grpc_server``) cannot answer, so its endpoints would never enter rotation.
When every configured parser reads one such API (``vllmgrpc-parser`` without
``openai-parser``), ``kvgate epp`` probes with that API's health RPC instead: one unary call
per probe on a channel kept per endpoint, healthy when the reply says so within the timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvgate.scheduling.types import Endpoint


class GrpcHealthProbe:
    """``await probe(endpoint)``: True when ``method`` answers and ``healthy(reply)`` holds."""

    def __init__(
        self, method: str, healthy: Callable[[bytes], bool], timeout_s: float = 2.0
    ) -> None:
        self.method = method
        self.healthy = healthy
        self.timeout_s = timeout_s
        self._calls: dict[str, tuple[Any, Any]] = {}  # hostport -> (channel, callable)

    async def __call__(self, endpoint: Endpoint) -> bool:
        import grpc

        call = self._call(endpoint.hostport)
        try:
            reply = await call(b"", timeout=self.timeout_s)
        except grpc.RpcError:
            return False
        return self.healthy(reply)

    def _call(self, hostport: str) -> Any:
        found = self._calls.get(hostport)
        if found is None:
            import grpc

            channel = grpc.aio.insecure_channel(hostport)
            unary = channel.unary_unary(
                self.method,
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            found = self._calls[hostport] = (channel, unary)
        return found[1]

    async def close(self) -> None:
        calls, self._calls = self._calls, {}
        for channel, _ in calls.values():
            await channel.close()
