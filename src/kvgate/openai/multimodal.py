"""A chat request's multimodal content parts: which they are, and each one's hash.

The one place kvgate reads images, videos and audio out of an OpenAI chat body; the request
path (:func:`kvgate.openai.requests.build_request`), the encode leg (kvgate.sidecar.encode)
and the simulator all call it. Recognised part types are those llm-d's parsers and routing
sidecar recognise: ``image_url`` and ``video_url`` (``{"url": ...}``), ``audio_url`` (same
shape) and ``input_audio`` (``{"data": ..., "format": ...}``). A part's identity is what
llm-d's estimate backend hashes: the URL (a ``data:`` URL carries the bytes themselves), or
inline audio's data followed by its format (:func:`kvgate.kvcache.hashing.mm_item_hash`).

A string ``content`` (every text-only chat) is skipped by one type test per message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvgate.errors import BadRequestError
from kvgate.kvcache.hashing import mm_item_hash
from kvgate.scheduling.types import MMItem

__all__ = ["MODALITIES", "mm_items", "part_identity"]

#: content part type -> llm-d's modality (tokenizer/estimate.go, sidecar mmTypes)
MODALITIES: dict[str, str] = {
    "image_url": "image",
    "video_url": "video",
    "audio_url": "audio",
    "input_audio": "audio",
}


def part_identity(part: Mapping[str, Any]) -> str | None:
    """What identifies a multimodal part (its URL, or audio data + format); None when the
    part is not multimodal."""
    kind = part.get("type")
    if kind not in MODALITIES:
        return None
    inner = part.get(kind)
    if kind == "input_audio":
        if isinstance(inner, Mapping) and isinstance(inner.get("data"), str):
            fmt = inner.get("format")
            return str(inner["data"]) + (fmt if isinstance(fmt, str) else "")
        return ""
    if isinstance(inner, Mapping) and isinstance(inner.get("url"), str):
        return str(inner["url"])
    if isinstance(inner, str):  # vLLM also takes {"image_url": "<url>"}
        return inner
    return ""


def mm_items(messages: Sequence[Any]) -> tuple[MMItem, ...]:
    """Every multimodal part of ``messages``, in order, repeats included.

    A part of a multimodal type without its URL or data is a 400 naming it, as vLLM rejects
    it; other part types (text, tool results) are left to the model server."""
    items: list[MMItem] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                continue
            identity = part_identity(part)
            if identity is None:
                continue
            kind = str(part["type"])
            if not identity:
                field = "data" if kind == "input_audio" else "url"
                where = f"messages[{i}].content[{j}].{kind}.{field}"
                raise BadRequestError(f"'{where}' is required", param=where)
            items.append(MMItem(MODALITIES[kind], mm_item_hash(identity), part))
    return tuple(items)
