"""Generated text: ``random`` (plausible words, deterministic by seed) or ``echo``.

Random mode draws from a list of common English words that the tokenizer encodes as one
token each (with a leading space), so every generated token has a real id (block hashes of
decode blocks are then as real as the prompt's) and the text reads like words.
Echo mode replays the prompt's tokens (the last user message for chat).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec

from kvgate.kvcache.tokenize import Tokenizer

__all__ = ["OutputVocab", "TokenStream"]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "this",
    "which",
    "or",
    "are",
    "had",
    "not",
    "but",
    "be",
    "have",
    "one",
    "all",
    "were",
    "they",
    "an",
    "their",
    "been",
    "has",
    "more",
    "when",
    "who",
    "will",
    "would",
    "there",
    "can",
    "no",
    "so",
    "if",
    "out",
    "up",
    "into",
    "time",
    "only",
    "new",
    "some",
    "could",
    "these",
    "two",
    "may",
    "first",
    "then",
    "do",
    "any",
    "like",
    "my",
    "now",
    "over",
    "such",
    "our",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "small",
    "large",
    "system",
    "house",
    "water",
    "light",
    "model",
    "cache",
    "server",
    "request",
    "token",
    "block",
    "prefix",
    "router",
    "answer",
    "point",
    "place",
    "number",
    "part",
    "city",
    "river",
    "music",
    "story",
    "table",
    "window",
    "garden",
    "morning",
    "evening",
    "simple",
    "clear",
    "open",
    "close",
    "early",
    "late",
    "quick",
    "slow",
    "bright",
    "quiet",
    "warm",
    "cold",
    "green",
    "blue",
    "red",
    "white",
]

_json = msgspec.json.Encoder()


class OutputVocab:
    """Single-token words of a tokenizer plus a cache of each token's text and JSON form."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        ids: list[int] = []
        texts: list[str] = []
        for word in _WORDS:
            enc = tokenizer.encode(" " + word, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
                texts.append(" " + word)
        if not ids:  # a tokenizer without single-token words: fall back to any ids
            ids = list(range(100, 200))
            texts = [tokenizer.decode([i]) for i in ids]
        self.word_ids = ids
        self._text: dict[int, str] = dict(zip(ids, texts, strict=True))
        self._json: dict[int, bytes] = {}

    def text(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=True)
            self._text[token_id] = text
        return text

    def json(self, token_id: int) -> bytes:
        """The token's text as a JSON string literal (pre-encoded for SSE chunks)."""
        data = self._json.get(token_id)
        if data is None:
            data = _json.encode(self.text(token_id))
            self._json[token_id] = data
        return data


class TokenStream:
    """The tokens one request will generate, decided up front and revealed one per step."""

    __slots__ = ("finish_reason", "ids", "last_text", "stop_reason")

    def __init__(
        self,
        vocab: OutputVocab,
        *,
        mode: str,
        seed: int,
        max_tokens: int,
        echo_ids: Sequence[int],
        natural_length: bool,
        stop: Sequence[str],
        ignore_eos: bool,
    ) -> None:
        rng = random.Random(seed)
        if mode == "echo":
            ids = list(echo_ids[:max_tokens])
            finish = "length" if len(ids) >= max_tokens else "stop"
            if ignore_eos and len(ids) < max_tokens:
                words = vocab.word_ids
                ids.extend(rng.choice(words) for _ in range(max_tokens - len(ids)))
                finish = "length"
        else:
            length = max_tokens
            finish = "length"
            if natural_length and not ignore_eos:
                natural = rng.randint(16, 128)
                if natural < max_tokens:
                    length, finish = natural, "stop"
            words = vocab.word_ids
            ids = [rng.choice(words) for _ in range(length)]
        self.last_text: str | None = None
        self.stop_reason: str | None = None
        if stop and ids:
            # End at the token that completes a stop string; the text stops before it
            # (vLLM drops the stop string from the output) and finish_reason is "stop".
            text = ""
            for i, token in enumerate(ids):
                piece = vocab.text(token)
                text += piece
                found = [(text.find(s), s) for s in stop if s and s in text]
                if found:
                    ids = ids[: i + 1]
                    start = len(text) - len(piece)
                    at, matched = min(found)
                    self.last_text = text[start : max(start, at)]
                    self.stop_reason = matched
                    finish = "stop"
                    break
        self.ids = ids
        self.finish_reason = finish
