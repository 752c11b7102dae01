"""The two legs of a disaggregated request, as llm-d's routing sidecar runs them (``nixlv2``).

1. **Prefill leg**, to the endpoint named by ``x-prefiller-host-port``: the client's body with
   ``kv_transfer_params = {do_remote_decode: true, do_remote_prefill: false, remote_engine_id:
   null, remote_block_ids: null, remote_host: null, remote_port: null}``, ``stream: false``,
   no ``stream_options``, ``max_tokens: 1`` (and ``max_completion_tokens: 1`` for chat). The
   answer's ``kv_transfer_params`` say where the computed KV waits.
2. **Decode leg**, to the decode server: the client's body unchanged but for those returned
   ``kv_transfer_params``; its answer (streamed or whole) is the client's.

Both ``kvgate serve`` (when the schedule has a prefill target) and ``kvgate sidecar`` (beside
a decode server, behind Envoy + ``kvgate epp``) call :meth:`PrefillLeg.run`. One deliberate
difference from llm-d: a prefill leg that fails (connect error, non-2xx, a body without
``kv_transfer_params``) or exceeds its timeout is counted in
``kvgate_pd_prefill_total{outcome}`` and the request falls back to decode-only (the decode
server computes the prompt itself) instead of answering the client with the prefill's error.
A client that leaves cancels the leg in flight (the connection to that server is closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter

from kvgate.gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamStreamError

__all__ = [
    "PREFILL_OUTCOMES",
    "PrefillLeg",
    "decode_body",
    "outcome_counter",
    "parse_hostport",
    "post_for_json",
    "prefill_body",
]

log = logging.getLogger("kvgate.pd")

#: ``kvgate_pd_prefill_total`` outcomes: ok; no_params (the prefill answered but sent no
#: ``kv_transfer_params``: a connector that moves KV out of band, such as vLLM's
#: ExampleConnector or LMCache, where the decode replica loads the prompt itself); or why the
#: request fell back to decode-only.
PREFILL_OUTCOMES = ("ok", "no_params", "connect_error", "http_error", "bad_response", "timeout")

_PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_body(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """The prefill leg's request body (a new dict; ``body`` is left alone)."""
    out = dict(body)
    out["kv_transfer_params"] = dict(_PREFILL_PARAMS)
    out["stream"] = False
    out.pop("stream_options", None)
    out["max_tokens"] = 1
    if chat:
        out["max_completion_tokens"] = 1
    return out


def decode_body(body: Mapping[str, Any], kv_transfer_params: Mapping[str, Any]) -> dict[str, Any]:
    """The decode leg's request body: the client's, carrying the prefill's params."""
    out = dict(body)
    out["kv_transfer_params"] = dict(kv_transfer_params)
    return out


def parse_hostport(value: str) -> tuple[str, int] | None:
    """``ip:port`` or ``[v6]:port`` as the EPP writes it, or None if malformed."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    return (host, number) if 0 < number < 65536 else None


def outcome_counter(
    name: str, doc: str, outcomes: Iterable[str], registry: CollectorRegistry
) -> Counter:
    """A leg's ``<name>_total{outcome}`` counter with every outcome exported from the start."""
    counter = Counter(name, doc, ["outcome"], registry=registry)
    for outcome in outcomes:
        counter.labels(outcome)
    return counter


async def post_for_json(
    client: UpstreamClient,
    hostport: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    payload: bytes,
    timeout_s: float,
) -> tuple[str, dict[str, Any] | None]:
    """POST ``payload`` to a leg's server: ``("ok", its JSON object answer)`` or why not
    (``connect_error``, ``http_error``, ``bad_response``, ``timeout``) and None."""
    target = parse_hostport(hostport)
    if target is None:
        return "bad_response", None
    try:
        async with asyncio.timeout(timeout_s):
            upstream = await client.post(
                target[0], target[1], path, headers, payload, host_header=hostport
            )
            try:
                data = await upstream.read()
            finally:
                upstream.release()
    except TimeoutError:
        return "timeout", None
    except (UpstreamConnectError, UpstreamStreamError):
        return "connect_error", None
    if not 200 <= upstream.status < 300:
        return "http_error", None
    try:
        answer = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return "bad_response", None
    if not isinstance(answer, dict):
        return "bad_response", None
    return "ok", answer


class PrefillLeg:
    """Runs prefill legs over one upstream client and counts their outcomes."""

    def __init__(
        self, client: UpstreamClient, registry: CollectorRegistry, *, timeout_s: float = 60.0
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.outcomes = outcome_counter(
            "kvgate_pd_prefill",
            "P/D prefill legs by outcome (anything but ok fell back to decode-only)",
            PREFILL_OUTCOMES,
            registry,
        )

    async def run(
        self,
        hostport: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: Mapping[str, Any],
        *,
        chat: bool,
        request_id: str = "",
    ) -> dict[str, Any] | None:
        """The prefill's ``kv_transfer_params``, or None (counted, logged) to go decode-only.

        Cancellation propagates: the connection to the prefill server is closed with it."""
        outcome, params = await self._run(hostport, path, headers, body, chat=chat)
        self.outcomes.labels(outcome).inc()
        if outcome == "no_params":
            log.debug("request %s: prefill at %s sent no kv_transfer_params", request_id, hostport)
        elif params is None:
            log.warning(
                "request %s: prefill leg to %s failed (%s); decoding without it",
                request_id,
                hostport,
                outcome,
            )
        return params

    async def _run(
        self,
        hostport: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: Mapping[str, Any],
        *,
        chat: bool,
    ) -> tuple[str, dict[str, Any] | None]:
        payload = msgspec.json.encode(prefill_body(body, chat=chat))
        outcome, answer = await post_for_json(
            self.client, hostport, path, headers, payload, self.timeout_s
        )
        if answer is None:
            return outcome, None
        params = answer.get("kv_transfer_params")
        if params is None:  # the connector moves KV out of band: decode without params
            return "no_params", None
        if not isinstance(params, dict):
            return "bad_response", None
        return "ok", params
