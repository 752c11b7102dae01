"""The only place text becomes tokens: tokenizer loading, chat templates, per-request cache.

A :class:`Tokenizer` wraps a Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``) and
the model's chat template (``chat_template.jinja`` or ``tokenizer_config.json``'s
``chat_template``; ChatML when none is given). The SmolLM2-135M-Instruct tokenizer and
template ship inside the package (Apache-2.0, see data/tokenizers/*/README.md) and are the
default, so the simulator, the router and real vLLM serving SmolLM2 agree on prompt token
ids exactly. vLLM tokenizes a rendered chat with ``add_special_tokens=False`` and a
completion prompt with the tokenizer's defaults; :meth:`Tokenizer.encode_request` does the same.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as HFTokenizer

from kvgate.scheduling.types import Request

DEFAULT_TOKENIZER_NAME = "smollm2-135m-instruct"

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


@lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    env.globals["raise_exception"] = _raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
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
