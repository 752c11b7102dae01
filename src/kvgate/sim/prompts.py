"""Prompt tokenization of the simulator, kept off the engine's modelled schedule.

The engine steps on the event loop, so a handler that tokenizes inline holds every in-flight
request's step for as long as that takes: ~11 ms for an 8000-token prompt on a 2-core Xeon
(40 ms on slower machines), more than the H100 prefill the profile models. Therefore:

- every prompt goes through one :class:`~kvgate.kvcache.tokenize.ChunkCachedEncoder` per
  process, so a resent prefix (system prompt, document, chat history) is looked up rather
  than encoded again (0.3 ms instead of 11 ms for 8000 shared tokens + 100 new ones);
- a prompt over ``inline_max_chars`` is encoded on one worker thread, where what remains of a
  cold encode runs while the loop keeps stepping (Hugging Face ``tokenizers`` releases the
  GIL while it encodes). One thread: long prompts are encoded in arrival order, and the
  cache sees one writer;
- shorter prompts are encoded inline, uncached (under ~0.6 ms, and at most one chunk, for
  which the chunk encoder does a whole encode anyway).

The ids are exactly the tokenizer's own (``Tokenizer.encode`` / ``encode_chat``), which the
router and real vLLM compute too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvgate.kvcache.tokenize import ChunkCachedEncoder, Tokenizer

__all__ = ["PromptEncoder"]


class PromptEncoder:
    """Async tokenization for the simulator's handlers; one per process (per SimState)."""

    def __init__(self, tokenizer: Tokenizer, *, inline_max_chars: int = 2048) -> None:
        self.tokenizer = tokenizer
        #: Used by the worker thread only (the encoder's own lock makes other use safe too).
        self.chunked = ChunkCachedEncoder(tokenizer)
        self.inline_max_chars = inline_max_chars
        self.num_offloaded = 0  # prompts encoded on the worker thread
        self._executor: ThreadPoolExecutor | None = None

    async def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``tokenizer.encode(text, add_special_tokens=...)``, off the loop when long."""
        if len(text) <= self.inline_max_chars:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        call = functools.partial(self.chunked.encode, text, add_special_tokens=add_special_tokens)
        return await self._offload(call)

    async def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """``tokenizer.encode_chat(messages, ...)``, off the loop (template included) when the
        messages' text is long."""
        if _content_chars(messages) <= self.inline_max_chars:
            return self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt)
        call = functools.partial(
            self.chunked.encode_chat, messages, add_generation_prompt=add_generation_prompt
        )
        return await self._offload(call)

    async def _offload(self, call: functools.partial[list[int]]) -> list[int]:
        if self._executor is None:
            # Created on first use, so a process (or test) that never sees a long prompt
            # starts no thread.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kvgate-sim-tokenize")
        self.num_offloaded += 1
        # If the handler is cancelled (client gone), the encode still finishes on the
        # thread and fills the cache; only its result is dropped.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        """Stop the worker thread (queued encodes are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _content_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """The length of the messages' text (string contents and text parts): the rendered
    prompt is this plus the template's few markers per message."""
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    n += len(part["text"])
    return n
