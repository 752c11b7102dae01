"""The encode (E) leg of an E/P/D request, as llm-d's routing sidecar and vLLM's
disaggregated-encoder proxy run it.

For a chat request whose schedule named encoders (``x-encoder-hosts-ports``, comma-joined
``ip:port``s), before any prefill or decode leg:

1. The request's multimodal parts (kvgate.openai.multimodal), URL-based ones deduplicated by
   URL, are sent one per request, concurrently, to the encoders in turn (part ``i`` to
   encoder ``i mod n``): each body is the client's with ``messages`` replaced by one user
   message holding only that part, ``max_tokens: 1`` (and ``max_completion_tokens: 1`` when
   the client set it), ``stream: false``, no ``stream_options``; ``x-request-id`` is the
   request's with ``-enc-<i>``.
2. The encoder computes the part's embeddings and leaves them where the prefill (or
   prefill-decode) server's EC connector finds them (vLLM's ``ECExampleConnector``: a shared
   directory keyed by the item's hash). With ``collect`` (llm-d's ``ec-nixl``) each answer's
   ``ec_transfer_params`` object is merged into the next leg's body; without it (llm-d's
   ``ec-example``) the answers are only checked for success.

Both ``kvgate serve`` and ``kvgate sidecar`` call :meth:`EncodeLeg.run`. Outcomes are counted
per part in ``kvgate_epd_encode_total{outcome}``. One deliberate difference from llm-d, as
for the prefill leg: a part whose encode fails (connect error, non-2xx, timeout) does not
fail the client's request with a 502; the request goes on and the prefill server encodes
what it does not find in the EC store itself (as vLLM's EC consumer does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from kvgate.gateway.upstream import UpstreamClient
from kvgate.openai.multimodal import mm_items
from kvgate.sidecar.legs import outcome_counter, post_for_json

__all__ = ["ENCODE_OUTCOMES", "EncodeLeg", "encode_parts", "encoder_body", "with_ec_params"]

log = logging.getLogger("kvgate.epd")

ENCODE_OUTCOMES = ("ok", "connect_error", "http_error", "bad_response", "timeout")
CHAT_PATH = "/v1/chat/completions"
EC_TRANSFER_PARAMS = "ec_transfer_params"


def encode_parts(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The parts to encode: every multimodal part, URL-based ones once per URL."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    seen: set[str] = set()
    parts: list[Mapping[str, Any]] = []
    for item in mm_items(messages):
        inner = item.part.get(str(item.part.get("type")))
        url = inner.get("url") if isinstance(inner, Mapping) else inner
        if isinstance(url, str) and item.part.get("type") != "input_audio":
            if url in seen:
                continue
            seen.add(url)
        parts.append(item.part)
    return parts


def encoder_body(body: Mapping[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """One part's encode request body (a new dict; ``body`` is left alone)."""
    out = dict(body)
    out["messages"] = [{"role": "user", "content": [dict(part)]}]
    out["max_tokens"] = 1
    if "max_completion_tokens" in body:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    out.pop("stream_options", None)
    return out


class EncodeLeg:
    """Runs encode legs over one upstream client and counts their outcomes."""

    def __init__(
        self, client: UpstreamClient, registry: CollectorRegistry, *, timeout_s: float = 60.0
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.outcomes = outcome_counter(
            "kvgate_epd_encode",
            "E/P/D encode requests, one per multimodal part, by outcome",
            ENCODE_OUTCOMES,
            registry,
        )

    async def run(
        self,
        encoders: str,
        headers: Iterable[tuple[str, str]],
        body: Mapping[str, Any],
        *,
        collect: bool,
        request_id: str = "",
    ) -> dict[str, Any] | None:
        """Encode ``body``'s parts at ``encoders`` (the header's value); with ``collect``, the
        merged ``ec_transfer_params`` (None when no answer carried any)."""
        targets = [t.strip() for t in encoders.split(",") if t.strip()]
        parts = encode_parts(body)
        if not targets or not parts:
            return None
        base = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
        results = await asyncio.gather(
            *(
                self._one(targets[i % len(targets)], base, body, part, f"{request_id}-enc-{i}")
                for i, part in enumerate(parts)
            )
        )
        merged: dict[str, Any] = {}
        for hostport, (outcome, params) in zip(
            (targets[i % len(targets)] for i in range(len(parts))), results, strict=True
        ):
            self.outcomes.labels(outcome).inc()
            if outcome != "ok":
                log.warning(
                    "request %s: encode leg to %s failed (%s); the prefill server encodes it",
                    request_id,
                    hostport,
                    outcome,
                )
            elif collect and params:
                merged.update(params)
        return merged or None

    async def _one(
        self,
        hostport: str,
        headers: Sequence[tuple[str, str]],
        body: Mapping[str, Any],
        part: Mapping[str, Any],
        request_id: str,
    ) -> tuple[str, dict[str, Any] | None]:
        payload = msgspec.json.encode(encoder_body(body, part))
        hdrs = [*headers, ("x-request-id", request_id)]
        outcome, answer = await post_for_json(
            self.client, hostport, CHAT_PATH, hdrs, payload, self.timeout_s
        )
        if answer is None:
            return outcome, None
        params = answer.get(EC_TRANSFER_PARAMS)
        return "ok", params if isinstance(params, dict) else None


def with_ec_params(body: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The next leg's body: the client's, carrying the encoders' merged params if any."""
    out = dict(body)
    if params:
        out[EC_TRANSFER_PARAMS] = dict(params)
    return out
