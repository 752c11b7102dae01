"""kvcache.tokenize renders real chat templates exactly as transformers' apply_chat_template does.

Templates: SmolLM2's (../shared/models, also shipped in the package), Qwen3's and Llama 3.2's
(tests/data/chat-templates, sources in SOURCES.md). Each is loaded the way a model folder
holds it -- ``chat_template`` in tokenizer_config.json, or chat_template.jinja beside it -- by
both kvgate and transformers, and rendered for the same conversations and keyword arguments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import transformers

from kvgate.kvcache.tokenize import Tokenizer, render_chat

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "../shared/models/smollm2-135m-instruct"
TEMPLATES = ROOT / "tests/data/chat-templates"

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city — ünïcödé kept",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS: list[tuple[str, list[dict[str, Any]]]] = [
    ("one user turn", [{"role": "user", "content": "What is the capital of France?"}]),
    (
        "system and history",
        [
            {"role": "system", "content": "You are terse.  "},
            {"role": "user", "content": "Hi 漢字 😀"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "  And   now?\n"},
        ],
    ),
    (
        "reasoning in history",
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
            {"role": "user", "content": "times 3?"},
        ],
    ),
]


def _model_folder(tmp: Path, template: str, *, as_file: bool) -> Path:
    """A model folder with SmolLM2's tokenizer.json and ``template`` as its chat template."""
    folder = tmp / ("file" if as_file else "config")
    folder.mkdir()
    shutil.copyfile(SMOLLM2 / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((SMOLLM2 / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if as_file:
        (folder / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _template(name: str) -> str:
    path = SMOLLM2 / "chat_template.jinja" if name == "smollm2" else TEMPLATES / name
    assert path.is_file(), f"missing test data {path}"
    return path.read_text()


@pytest.mark.parametrize("as_file", [False, True], ids=["tokenizer_config", "jinja_file"])
@pytest.mark.parametrize("name", ["smollm2", "qwen3.jinja", "llama-3.2.jinja"])
def test_renders_as_transformers(tmp_path: Path, name: str, as_file: bool) -> None:
    folder = _model_folder(tmp_path, _template(name), as_file=as_file)
    ours = Tokenizer.from_path(folder)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    extra: list[dict[str, Any]] = [{}]
    if name == "qwen3.jinja":
        extra += [{"enable_thinking": False}, {"tools": _TOOLS}]
    if name == "llama-3.2.jinja":  # pinned date: the template otherwise calls strftime_now
        extra = [{"date_string": "26 Jul 2024"}, {"date_string": "1 Jan 2025", "tools": _TOOLS}]
    for label, messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            for kwargs in extra:
                expected = theirs.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
                )
                got = render_chat(
                    messages,
                    ours.chat_template,
                    add_generation_prompt=generation_prompt,
                    special_tokens=ours.special_tokens,
                    **kwargs,
                )
                assert got == expected, (name, label, generation_prompt, kwargs)
        # and the ids vLLM computes: the rendered chat encoded without special tokens
        expected_ids = theirs.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        if name != "llama-3.2.jinja":  # today's date in the prompt: rendered above, pinned
            assert ours.encode_chat(messages) == list(expected_ids), (name, label)


def test_builtin_smollm2_template_is_the_models() -> None:
    assert Tokenizer.default().chat_template == _template("smollm2")
