"""Reading configuration documents: YAML or JSON text -> plain Python data, or Problems.

Both llm-d's EndpointPickerConfig and KServe's LLMInferenceService arrive as YAML or JSON.
Syntax errors become :class:`~kvgate.errors.Problem` objects with a 1-based line and column.
Duplicate mapping keys are rejected too (PyYAML would silently keep the last one, while the
Go decoders llm-d uses refuse them in strict mode).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvgate.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed file or text: ``data`` is the decoded value, ``source`` names it in errors.

    ``line_offset``/``column_offset`` place the text inside an outer file (``--config-text``
    in an LLMInferenceService), so that :meth:`locate` answers in the outer file's terms.
    """

    data: Any
    source: str
    text: str
    line_offset: int = 0
    column_offset: int = 0

    def locate(self, path: str) -> tuple[int, int] | None:
        """1-based (line, column) of the field at ``path`` (``plugins[x].parameters.y``).

        Walks as far as the path exists, so a missing field points at its parent. Only used
        when reporting problems, so the text is composed again on demand.
        """
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            return None
        node = find_node(root, path)
        if node is None:
            return None
        mark = node.start_mark
        return mark.line + 1 + self.line_offset, mark.column + 1 + self.column_offset


_PATH_TOKEN = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


def find_node(root: yaml.Node | None, path: str) -> yaml.Node | None:
    """The deepest node along ``path``; a key step yields the key's node (where the field is).

    ``[i]`` selects a list item by index; ``[name]`` the item whose ``name`` (or, lacking a
    name, ``type``) is ``name``, as kvgate's field paths name plugins and profiles.
    """
    if root is None:
        return None
    here: yaml.Node = root  # the node we are inside
    found: yaml.Node = root  # what to point at
    for m in _PATH_TOKEN.finditer(path):
        selector, key = m.group(1), m.group(2)
        if key is not None:
            if not isinstance(here, yaml.MappingNode):
                break
            pair = next(
                (
                    (k, v)
                    for k, v in here.value
                    if isinstance(k, yaml.ScalarNode) and k.value == key
                ),
                None,
            )
            if pair is None:
                break
            found, here = pair[0], pair[1]
        else:
            if not isinstance(here, yaml.SequenceNode):
                break
            item = _select(here, selector)
            if item is None:
                break
            found = here = item
    return found


def _select(seq: yaml.SequenceNode, selector: str) -> yaml.Node | None:
    items: list[yaml.Node] = list(seq.value)
    if selector.isdigit():
        index = int(selector)
        return items[index] if index < len(items) else None
    for item in items:
        if not isinstance(item, yaml.MappingNode):
            continue
        fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
        name = fields.get("name") or fields.get("type")
        if isinstance(name, yaml.ScalarNode) and name.value == selector:
            return item
    return None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, reporting where the second one is."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let the base constructor raise its own error
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_text(text: str, source: str, *, line_offset: int = 0, column_offset: int = 0) -> Document:
    """Decode ``text`` (JSON when it starts with ``{``, else YAML); raise ConfigError on syntax.

    ``line_offset``/``column_offset`` shift error positions when the text is embedded in another
    file (``--config-text`` inside an LLMInferenceService), so errors point into the outer file.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [
                    Problem(
                        source,
                        "",
                        f"JSON syntax error: {exc.msg}",
                        exc.lineno + line_offset,
                        exc.colno + column_offset,
                    )
                ]
            ) from exc
        return Document(data, source, text, line_offset, column_offset)
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message = f"{message} ({exc.context})"
        line = mark.line + 1 + line_offset if mark is not None else None
        column = mark.column + 1 + column_offset if mark is not None else None
        raise ConfigError(
            [Problem(source, "", f"YAML syntax error: {message}", line, column)]
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, "", f"YAML syntax error: {exc}")]) from exc
    return Document(data, source, text, line_offset, column_offset)


def read_document(path: str | Path) -> Document:
    """Read and decode a file; a missing or unreadable file is a ConfigError too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([Problem(str(path), "", "file not found")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read file: {exc}")]) from exc
    return parse_text(text, str(path))


def kind_of(data: Any) -> str | None:
    """The ``kind`` of a decoded Kubernetes-style document, if it has one."""
    if isinstance(data, dict):
        kind = data.get("kind")
        if isinstance(kind, str):
            return kind
    return None


def describe(value: object) -> str:
    """How a value reads in an error message: ``string 'x'``, ``number 3``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
