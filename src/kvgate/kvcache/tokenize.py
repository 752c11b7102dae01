"""The only place text becomes tokens: tokenizer loading, chat templates, per-request cache.

A :class:`Tokenizer` wraps a Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``) and
the model's chat template (``chat_template.jinja`` or ``tokenizer_config.json``'s
``chat_template``; ChatML when none is given). The SmolLM2-135M-Instruct tokenizer and
template ship inside the package (Apache-2.0, see data/tokenizers/*/README.md) and are the
default, so the simulator, the router and real vLLM serving SmolLM2 agree on prompt token
ids exactly. vLLM tokenizes a rendered chat with ``add_special_tokens=False`` and a
completion prompt with the tokenizer's defaults; :meth:`Tokenizer.encode_request` does the same.

A model's own tokenizer is found by :func:`load_tokenizer` (a path, llm-d's
``tokenizersPoolConfig`` sources, the Hugging Face cache or the Hub: see
:mod:`kvgate.kvcache.tokenizer_files`). Chat templates render as ``transformers``'
``apply_chat_template`` renders them: the same sandbox, ``trim_blocks``/``lstrip_blocks``,
``loopcontrols``, the ``{% generation %}`` tag, ``raise_exception``, ``strftime_now`` and a
``tojson`` that keeps non-ASCII text (tests/kvcache/test_chat_templates.py compares them).

Front doors hand plugins the process's defaults through ``PluginContext.services``
(:func:`tokenizer_services`): ``"tokenizer"`` (``--tokenizer``) and ``"hf-offline"``
(``--offline``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.sandbox
from tokenizers import Tokenizer as HFTokenizer

from kvgate.kvcache.tokenizer_files import TokenizerSource, find_tokenizer
from kvgate.scheduling.types import Request

DEFAULT_TOKENIZER_NAME = "smollm2-135m-instruct"
#: ``PluginContext.services`` keys the front doors fill (see :func:`tokenizer_services`).
TOKENIZER_SERVICE = "tokenizer"
OFFLINE_SERVICE = "hf-offline"
#: Set in PluginContext.services by the configuration loader's trial build: plugins check their
#: fields but load no tokenizer (that happens when the scheduler is built for serving).
TRIAL_SERVICE = "config-trial"

#: Used when a tokenizer comes without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def builtin_tokenizer_dir(name: str = DEFAULT_TOKENIZER_NAME) -> Path:
    """The folder of a tokenizer shipped inside the package."""
    return Path(str(resources.files("kvgate") / "data" / "tokenizers" / name))


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter, not Jinja's: no HTML escaping, non-ASCII kept
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers marks the
    assistant's span with it; the text is the same)."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's Extension API declares it so

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


@lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationTag],
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    template: str = CHATML_TEMPLATE,
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render chat messages with a Hugging Face style Jinja chat template.

    List-valued ``content`` (OpenAI content parts) is flattened to its text parts, as vLLM
    does for text-only models.
    """
    normalised = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        normalised.append({**message, "content": "" if content is None else content})
    return _compile_template(template).render(
        messages=normalised,
        add_generation_prompt=add_generation_prompt,
        **(special_tokens or {}),
        **kwargs,
    )


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """A loaded tokenizer plus its chat template. Thread-safe for encode."""

    name: str
    hf: HFTokenizer
    chat_template: str
    special_tokens: Mapping[str, str]

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """Load from a ``tokenizer.json`` file or a model folder holding one."""
        return _load(str(Path(path).resolve()))

    @classmethod
    def default(cls) -> Tokenizer:
        """The built-in SmolLM2-135M-Instruct tokenizer."""
        return _load(str(builtin_tokenizer_dir()))

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        return render_chat(
            messages,
            self.chat_template,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
        )

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a templated chat, as vLLM computes ``prompt_token_ids``."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    def encode_request(self, request: Request) -> tuple[int, ...]:
        """The request's prompt token ids, computed once and memoised on the request."""
        if request.token_ids is None:
            if request.kind == "chat" and request.messages is not None:
                ids = self.encode_chat(request.messages)
            else:
                ids = self.encode(request.prompt or "")
            request.token_ids = tuple(ids)
        return request.token_ids


_LOCK = threading.Lock()
_CACHE: dict[str, Tokenizer] = {}


def _load(path: str) -> Tokenizer:
    with _LOCK:
        cached = _CACHE.get(path)
        if cached is not None:
            return cached
        p = Path(path)
        folder = p.parent if p.is_file() else p
        tokenizer_file = p if p.is_file() else p / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json found")
        hf = HFTokenizer.from_file(str(tokenizer_file))
        template = CHATML_TEMPLATE
        special: dict[str, str] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            if isinstance(config.get("chat_template"), str):
                template = config["chat_template"]
            for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                value = config.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    special[key] = value
        template_file = folder / "chat_template.jinja"
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        tok = Tokenizer(folder.name, hf, template, special)
        _CACHE[path] = tok
        return tok


def load_tokenizer(ref: str | Path, source: TokenizerSource | None = None) -> Tokenizer:
    """The tokenizer for ``ref``: a tokenizer.json, a model folder, or a model name found as
    :func:`kvgate.kvcache.tokenizer_files.find_tokenizer` finds it (local map, discovery, the
    HF cache, the Hub unless offline). Loaded once per path (:meth:`Tokenizer.from_path`).

    Raises :class:`~kvgate.kvcache.tokenizer_files.TokenizerNotFoundError` (one line naming the
    model and the options), never falls back to another model's tokenizer.
    """
    path = find_tokenizer(str(ref), source)
    try:
        return Tokenizer.from_path(path)
    except Exception as exc:  # tokenizers raises its own Exception subclasses
        from kvgate.kvcache.tokenizer_files import TokenizerNotFoundError

        raise TokenizerNotFoundError(f"tokenizer {path}: cannot be loaded: {exc}") from exc


def tokenizer_services(tokenizer: str | Path | None, *, offline: bool = False) -> dict[str, Any]:
    """``PluginContext.services`` entries for a front door's ``--tokenizer`` / ``--offline``.

    ``"tokenizer"``: the loaded ``--tokenizer`` (absent when not given: plugins then use their
    own ``tokenizersPoolConfig`` or the built-in SmolLM2 one, saying so at start-up);
    ``"hf-offline"``: whether plugins may download tokenizers from the Hub.
    """
    services: dict[str, Any] = {OFFLINE_SERVICE: offline}
    if tokenizer is not None and str(tokenizer):
        services[TOKENIZER_SERVICE] = load_tokenizer(tokenizer, TokenizerSource(offline=offline))
    return services


class ChunkCachedEncoder:
    """Encodes long prompts in whitespace-aligned chunks, memoising each chunk's ids.

    Prompts that resend the same long prefix (system prompts, documents, chat history) are
    then tokenized once: only the chunks after the shared part are encoded again. Exact for
    byte-level BPE tokenizers whose pre-tokenizer never lets a pre-token cross a space that
    starts a word (GPT-2's regex: ``' ?\\p{L}+'`` and friends), which is checked at
    construction: if ``encode("ab cd")`` differs from the concatenation of its halves, or the
    tokenizer adds special tokens at the end, every prompt is encoded whole.

    Chunks end just before a ``" <letter>"`` that follows a non-space, at the first such
    place after every ``chunk_chars`` characters, so the boundaries inside a shared prefix
    depend only on that prefix. Thread-safe; :func:`chunk_encoder` gives the process's one
    encoder per tokenizer, so plugins that tokenize the same prompts share the cache.
    """

    def __init__(self, tokenizer: Tokenizer, chunk_chars: int = 2048, max_chunks: int = 8192):
        self.tokenizer = tokenizer
        self.chunk_chars = chunk_chars
        self.max_chunks = max_chunks
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        # Guards the cache only (encoding runs outside it): one encoder per tokenizer is shared
        # by every plugin of the process (chunk_encoder), whichever loop or thread calls it.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        probe = "hello world again"
        whole = tokenizer.encode(probe)
        parts = tokenizer.encode("hello world") + tokenizer.encode(
            " again", add_special_tokens=False
        )
        plain = tokenizer.encode(probe, add_special_tokens=False)
        # special tokens only in front (or none): the tail of ``whole`` is the plain encoding
        self.exact = whole == parts and whole[len(whole) - len(plain) :] == plain

    def _boundaries(self, text: str) -> list[int]:
        cuts = []
        pos = self.chunk_chars
        n = len(text)
        while pos < n:
            i = pos
            while i < n - 1 and not (
                text[i] == " "
                and text[i + 1].isascii()
                and text[i + 1].isalpha()
                and not text[i - 1].isspace()
            ):
                i += 1
            if i >= n - 1:
                break
            cuts.append(i)
            pos = i + self.chunk_chars
        return cuts

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The same ids as ``tokenizer.encode(text, add_special_tokens=...)``."""
        if not self.exact or len(text) <= self.chunk_chars:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        out: list[int] = []
        start = 0
        cuts = self._boundaries(text)
        for k, end in enumerate([*cuts, len(text)]):
            chunk = text[start:end]
            special = add_special_tokens and k == 0
            key = chunk if not special else "\x00" + chunk
            with self._lock:
                ids = self._cache.get(key)
                if ids is not None:
                    self.hits += 1
                    self._cache.move_to_end(key)
            if ids is None:
                ids = tuple(self.tokenizer.encode(chunk, add_special_tokens=special))
                with self._lock:
                    self.misses += 1
                    self._cache[key] = ids
                    if len(self._cache) > self.max_chunks:
                        self._cache.popitem(last=False)
            out.extend(ids)
            start = end
        return out

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """The same ids as ``tokenizer.encode_chat(messages, ...)``: the rendered template,
        encoded through the chunk cache without special tokens (as vLLM encodes a chat), so
        a resent system prompt or history is looked up, not encoded again."""
        text = self.tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    def encode_request(self, request: Request) -> tuple[int, ...]:
        """Like :meth:`Tokenizer.encode_request`, through the chunk cache (memoised too)."""
        if request.token_ids is None:
            tok = self.tokenizer
            if request.kind == "chat" and request.messages is not None:
                ids = self.encode(tok.render_chat(request.messages), add_special_tokens=False)
            else:
                ids = self.encode(request.prompt or "")
            request.token_ids = tuple(ids)
        return request.token_ids


_ENCODERS_LOCK = threading.Lock()
_ENCODERS: dict[int, tuple[Tokenizer, ChunkCachedEncoder]] = {}


def chunk_encoder(tokenizer: Tokenizer) -> ChunkCachedEncoder:
    """The process's :class:`ChunkCachedEncoder` for ``tokenizer``, made on first use.

    Scorers tokenize on the request path through this, so a resent long prefix (system
    prompt, document, chat history) costs a few cache lookups instead of a full encode
    (8k tokens: ~10 ms whole, ~1 ms with the prefix seen). Keyed by identity: tokenizers
    loaded by path are themselves cached (``Tokenizer.from_path``), so one path, one encoder.
    """
    with _ENCODERS_LOCK:
        entry = _ENCODERS.get(id(tokenizer))
        if entry is None:  # the entry holds the tokenizer, so its id is never reused
            entry = (tokenizer, ChunkCachedEncoder(tokenizer))
            _ENCODERS[id(tokenizer)] = entry
        return entry[1]
