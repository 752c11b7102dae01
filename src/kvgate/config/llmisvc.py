"""KServe's ``LLMInferenceService`` (serving.kserve.io/v1alpha1): a typed view of what kvgate uses.

Only the parts kvgate acts on are typed: the model, replicas, LoRA adapters, the scheduler
container's arguments and the EndpointPickerConfig they carry, and the model-server template's
environment. Resources, probes and tolerations stay raw dicts for the Kubernetes renderer.
Unlike the EndpointPickerConfig, unknown fields are allowed here: the CRD is large and
kvgate reads only part of it.

The picker config comes from the scheduler container's args after ``--config-text``, or the
file after ``--config-file`` (relative to the YAML's folder), or ``spec.router.scheduler.config
.inline``; otherwise llm-d's default (queue 2, kv-cache-utilization 2, prefix-cache 3) applies.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvgate.config.documents import Document, describe, kind_of, read_document
from kvgate.config.loader import KIND as PICKER_KIND
from kvgate.config.loader import load_picker_config, load_picker_config_text
from kvgate.config.model import PickerConfig
from kvgate.errors import ConfigError, Problem

API_VERSIONS: tuple[str, ...] = ("serving.kserve.io/v1alpha1", "serving.kserve.io/v1alpha2")
KIND = "LLMInferenceService"
#: Annotation that turns authentication on the route on or off.
AUTH_ANNOTATION = "security.opendatahub.io/enable-auth"
_SCHEDULER_CONTAINERS = "spec.router.scheduler.template.containers"


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    name: str
    uri: str


@dataclass(frozen=True, slots=True)
class LLMInferenceService:
    """The parts of an LLMInferenceService kvgate acts on."""

    name: str
    namespace: str
    source: str  # the file it came from
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    replicas: int = 1
    model_uri: str = ""  # hf://org/name, pypi://..., s3://..., pvc://...
    model_name: str = ""  # the served model name (default metadata.name)
    lora_adapters: tuple[LoraAdapter, ...] = ()
    scheduler_container: str | None = None  # name of the container with the EPP args
    scheduler_args: tuple[str, ...] = ()  # raw, with template placeholders unexpanded
    scheduler_env: Mapping[str, str] = field(default_factory=dict)
    picker_config_text: str = ""
    picker_config_origin: str = (
        "default"  # "--config-text", "--config-file <path>", "inline", "default"
    )
    picker_config: PickerConfig | None = None
    model_env: Mapping[str, str] = field(default_factory=dict)  # model-server container env
    model_container: Mapping[str, Any] = field(default_factory=dict)  # raw container dict
    resources: Mapping[str, Any] = field(default_factory=dict)
    liveness_probe: Mapping[str, Any] | None = None
    readiness_probe: Mapping[str, Any] | None = None
    startup_probe: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole document

    @property
    def auth_enabled(self) -> bool:
        """``security.opendatahub.io/enable-auth`` is 'true' (case-insensitive)."""
        return str(self.annotations.get(AUTH_ANNOTATION, "")).strip().lower() == "true"

    @property
    def vllm_additional_args(self) -> list[str]:
        """``VLLM_ADDITIONAL_ARGS`` of the model-server container, split like a shell would."""
        import shlex

        return shlex.split(self.model_env.get("VLLM_ADDITIONAL_ARGS", ""))

    @property
    def inference_pool_name(self) -> str:
        return child_name(self.name, "-inference-pool")

    def expanded_scheduler_args(self) -> list[str]:
        return expand_template_args(self.scheduler_args, self)

    def require_picker_config(self) -> PickerConfig:
        if self.picker_config is None:  # pragma: no cover - the loader always sets it
            raise ConfigError([Problem(self.source, "", "no scheduler configuration")])
        return self.picker_config


def child_name(parent: str, suffix: str) -> str:
    """Knative's ``kmeta.ChildName``: ``parent+suffix``, shortened with a hash past 63 chars."""
    name = parent + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    head = parent[: 63 - len(digest) - len(suffix)] if len(suffix) + len(digest) < 63 else ""
    return (head + digest + suffix)[:63] if head else (parent + digest)[:63]


_CHILD_NAME = re.compile(r"\{\{\s*ChildName\s+\.ObjectMeta\.Name\s+[`\"]([^`\"]*)[`\"]\s*\}\}")
_NAMESPACE = re.compile(r"\{\{\s*\.ObjectMeta\.Namespace\s*\}\}")
_NAME = re.compile(r"\{\{\s*\.ObjectMeta\.Name\s*\}\}")


def expand_template_args(args: Sequence[str], svc: LLMInferenceService) -> list[str]:
    """Render KServe's Go-template placeholders in scheduler args.

    ``{{ ChildName .ObjectMeta.Name `-inference-pool` }}`` becomes ``<name>-inference-pool``;
    ``{{ .ObjectMeta.Namespace }}`` the namespace and ``{{ .ObjectMeta.Name }}`` the name.
    Other text is left alone.
    """
    out: list[str] = []
    for arg in args:
        text = _CHILD_NAME.sub(lambda m: child_name(svc.name, m.group(1)), arg)
        text = _NAMESPACE.sub(svc.namespace, text)
        text = _NAME.sub(svc.name, text)
        out.append(text)
    return out


def load_llm_inference_service(
    path: str | Path, *, env: Mapping[str, str] | None = None
) -> LLMInferenceService:
    """Load an LLMInferenceService YAML/JSON and its scheduler configuration.

    Raises ConfigError with every problem found (the embedded EndpointPickerConfig's
    problems carry field paths into the outer file, e.g.
    ``spec.router.scheduler.template.containers[main].args[17].schedulingProfiles[...]``).
    """
    doc = read_document(path)
    return llm_inference_service_from_document(doc, base_dir=Path(path).parent, env=env)


def llm_inference_service_from_document(
    doc: Document, *, base_dir: Path, env: Mapping[str, str] | None = None
) -> LLMInferenceService:
    problems: list[Problem] = []
    src = doc.source

    def bad(path: str, message: str) -> None:
        where = doc.locate(path)
        line, column = where if where is not None else (None, None)
        problems.append(Problem(src, path, message, line, column))

    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(src, "", f"expected a mapping (an {KIND}), got {describe(data)}")]
        )
    if data.get("apiVersion") not in API_VERSIONS:
        bad(
            "apiVersion",
            f"expected {' or '.join(repr(v) for v in API_VERSIONS)}, got {describe(data.get('apiVersion'))}",
        )
    if data.get("kind") != KIND:
        bad("kind", f"expected '{KIND}', got {describe(data.get('kind'))}")

    metadata = _dict(data.get("metadata"), "metadata", bad)
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        bad("metadata.name", f"expected a non-empty string, got {describe(name)}")
        name = ""
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str):
        bad("metadata.namespace", f"expected a string, got {describe(namespace)}")
        namespace = "default"
    annotations = _str_map(metadata.get("annotations"), "metadata.annotations", bad)
    labels = _str_map(metadata.get("labels"), "metadata.labels", bad)

    spec = _dict(data.get("spec"), "spec", bad)
    replicas = spec.get("replicas", 1)
    if replicas is None:
        replicas = 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        bad("spec.replicas", f"expected an integer >= 0, got {describe(replicas)}")
        replicas = 1

    model = _dict(spec.get("model"), "spec.model", bad)
    model_uri = model.get("uri", "")
    if not isinstance(model_uri, str):
        bad("spec.model.uri", f"expected a string, got {describe(model_uri)}")
        model_uri = ""
    model_name = model.get("name") or name
    if not isinstance(model_name, str):
        bad("spec.model.name", f"expected a string, got {describe(model_name)}")
        model_name = name
    adapters: list[LoraAdapter] = []
    lora = _dict(model.get("lora"), "spec.model.lora", bad)
    for i, adapter in enumerate(_list(lora.get("adapters"), "spec.model.lora.adapters", bad)):
        apath = f"spec.model.lora.adapters[{i}]"
        if not isinstance(adapter, dict):
            bad(apath, f"expected a mapping with 'name' and 'uri', got {describe(adapter)}")
            continue
        a_uri = adapter.get("uri", "")
        a_name = adapter.get("name") or (
            a_uri.rstrip("/").rsplit("/", 1)[-1] if isinstance(a_uri, str) else ""
        )
        if not isinstance(a_uri, str) or not isinstance(a_name, str) or not a_name:
            bad(apath, "expected 'uri' (string) and 'name' (string)")
            continue
        adapters.append(LoraAdapter(a_name, a_uri))

    # Model-server template: the container named "main", else the first.
    template = _dict(spec.get("template"), "spec.template", bad)
    tolerations = tuple(
        t
        for t in _list(template.get("tolerations"), "spec.template.tolerations", bad)
        if isinstance(t, dict)
    )
    containers = _list(template.get("containers"), "spec.template.containers", bad)
    model_container = _pick_container(containers)
    model_env = _env(model_container.get("env"), "spec.template.containers[main].env", bad)

    # Scheduler: spec.router.scheduler.template.containers[*].args
    router = _dict(spec.get("router"), "spec.router", bad)
    scheduler = _dict(router.get("scheduler"), "spec.router.scheduler", bad)
    sched_template = _dict(scheduler.get("template"), "spec.router.scheduler.template", bad)
    sched_containers = _list(sched_template.get("containers"), _SCHEDULER_CONTAINERS, bad)
    sched_container: dict[str, Any] = {}
    container_key = ""
    for i, c in enumerate(sched_containers):
        if isinstance(c, dict) and isinstance(c.get("args"), list):
            sched_container = c
            container_key = str(c.get("name") or i)
            break
    if not sched_container and sched_containers and isinstance(sched_containers[0], dict):
        sched_container = sched_containers[0]
        container_key = str(sched_container.get("name") or 0)
    args_path = f"{_SCHEDULER_CONTAINERS}[{container_key}].args"
    raw_args = sched_container.get("args") or []
    args: list[str] = []
    for i, arg in enumerate(raw_args if isinstance(raw_args, list) else []):
        if isinstance(arg, str | int | float) and not isinstance(arg, bool):
            args.append(str(arg))
        else:
            bad(f"{args_path}[{i}]", f"expected a string, got {describe(arg)}")
    scheduler_env = _env(
        sched_container.get("env"), f"{_SCHEDULER_CONTAINERS}[{container_key}].env", bad
    )

    try:
        picker, text, origin = _scheduler_config(
            doc, args, args_path, scheduler.get("config"), base_dir, env
        )
    except ConfigError as exc:  # report the embedded config's problems with the outer ones
        raise ConfigError(problems + exc.problems) from exc
    if problems:
        raise ConfigError(problems)
    return LLMInferenceService(
        name=name,
        namespace=namespace,
        source=src,
        annotations=annotations,
        labels=labels,
        replicas=replicas,
        model_uri=model_uri,
        model_name=model_name,
        lora_adapters=tuple(adapters),
        scheduler_container=sched_container.get("name") if sched_container else None,
        scheduler_args=tuple(args),
        scheduler_env=scheduler_env,
        picker_config_text=text,
        picker_config_origin=origin,
        picker_config=picker,
        model_env=model_env,
        model_container=model_container,
        resources=_as_dict(model_container.get("resources")),
        liveness_probe=_as_dict_or_none(model_container.get("livenessProbe")),
        readiness_probe=_as_dict_or_none(model_container.get("readinessProbe")),
        startup_probe=_as_dict_or_none(model_container.get("startupProbe")),
        tolerations=tolerations,
        raw=data,
    )


def _scheduler_config(
    doc: Document,
    args: list[str],
    args_path: str,
    config_section: Any,
    base_dir: Path,
    env: Mapping[str, str] | None,
) -> tuple[PickerConfig, str, str]:
    """(config, text, origin) from ``--config-text``/``--config-file``/inline/default."""
    for i, arg in enumerate(args):
        flag, eq, inline_value = arg.partition("=")
        if flag not in ("--config-text", "-config-text", "--config-file", "-config-file"):
            continue
        if eq:
            value, value_index = inline_value, i
        elif i + 1 < len(args):
            value, value_index = args[i + 1], i + 1
        else:
            raise ConfigError(
                [Problem(doc.source, f"{args_path}[{i}]", f"{flag} needs a value after it")]
            )
        if flag.endswith("config-text"):
            line_offset, column_offset = _embedded_position(doc.text, value_index, args_path)
            config = load_picker_config_text(
                value,
                doc.source,
                path_prefix=f"{args_path}[{value_index}]",
                line_offset=line_offset,
                column_offset=column_offset,
                env=env,
            )
            return config, value, "--config-text"
        file_path = Path(value)
        if not file_path.is_absolute():
            file_path = base_dir / file_path
        if not file_path.exists():
            raise ConfigError(
                [
                    Problem(
                        doc.source,
                        f"{args_path}[{value_index}]",
                        f"--config-file {value!r} not found (looked at {file_path})",
                    )
                ]
            )
        config = load_picker_config(file_path, env=env)
        return config, config.text, f"--config-file {value}"
    if isinstance(config_section, dict) and config_section.get("inline") is not None:
        inline = config_section["inline"]
        path = "spec.router.scheduler.config.inline"
        if isinstance(inline, str):
            config = load_picker_config_text(inline, doc.source, path_prefix=path, env=env)
            return config, inline, "inline"
        text = yaml.safe_dump(inline, sort_keys=False)
        from kvgate.config.loader import picker_config_from_data

        config = picker_config_from_data(
            inline,
            source=doc.source,
            text=text,
            env=env,
            path_prefix=path,
            locate=lambda p: doc.locate(f"{path}.{p}" if p else path),
        )
        return config, text, "inline"
    from kvgate.config.policies import DEFAULT_POLICY, policy_config_text

    text = policy_config_text(DEFAULT_POLICY)
    config = load_picker_config_text(text, f"<policy {DEFAULT_POLICY}>", env=env)
    return config, text, "default"


def _embedded_position(text: str, arg_index: int, args_path: str) -> tuple[int, int]:
    """(line, column) offsets of the args[arg_index] block scalar's content in ``text``.

    Lets YAML errors inside ``--config-text`` point at the line in the outer file. Returns
    (0, 0) when the position cannot be found (e.g. a quoted or JSON document).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 0, 0
    node = root
    parts = args_path.split(".")
    try:
        for part in parts:
            key, _, index = part.partition("[")
            node = _child(node, key)
            if index:
                idx = index.rstrip("]")
                node = _list_item(node, idx)
        node = _list_item(node, str(arg_index))
    except LookupError:
        return 0, 0
    if not isinstance(node, yaml.ScalarNode) or node.style not in ("|", ">"):
        return 0, 0
    # A block scalar's content starts on the line after the indicator, indented uniformly.
    lines = text.splitlines()
    first = node.start_mark.line + 1
    while first < len(lines) and not lines[first].strip():
        first += 1
    if first >= len(lines):
        return 0, 0
    indent = len(lines[first]) - len(lines[first].lstrip(" "))
    return first, indent


def _child(node: yaml.Node | None, key: str) -> yaml.Node:
    if not isinstance(node, yaml.MappingNode):
        raise LookupError(key)
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            child: yaml.Node = v
            return child
    raise LookupError(key)


def _list_item(node: yaml.Node | None, idx: str) -> yaml.Node:
    if not isinstance(node, yaml.SequenceNode):
        raise LookupError(idx)
    if idx.isdigit():
        item: yaml.Node = node.value[int(idx)]
        return item
    for item in node.value:  # a container named idx
        if isinstance(item, yaml.MappingNode):
            for k, v in item.value:
                if k.value == "name" and isinstance(v, yaml.ScalarNode) and v.value == idx:
                    return item
    raise LookupError(idx)


def load_scheduler_source(
    path: str | Path, *, env: Mapping[str, str] | None = None
) -> PickerConfig:
    """The scheduler configuration in ``path``: an EndpointPickerConfig or an LLMInferenceService."""
    doc = read_document(path)
    kind = kind_of(doc.data)
    if kind == KIND:
        svc = llm_inference_service_from_document(doc, base_dir=Path(path).parent, env=env)
        return svc.require_picker_config()
    if kind != PICKER_KIND and kind is not None:
        raise ConfigError(
            [
                Problem(
                    doc.source,
                    "kind",
                    f"expected '{PICKER_KIND}' or '{KIND}', got {describe(kind)}",
                )
            ]
        )
    from kvgate.config.loader import picker_config_from_data

    return picker_config_from_data(
        doc.data, source=doc.source, text=doc.text, env=env, locate=doc.locate
    )


# ---- small typed readers -----------------------------------------------------------------

_Bad = Any  # Callable[[str, str], None]


def _dict(value: Any, path: str, bad: _Bad) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad(path, f"expected a mapping, got {describe(value)}")
        return {}
    return value


def _list(value: Any, path: str, bad: _Bad) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        bad(path, f"expected a list, got {describe(value)}")
        return []
    return value


def _str_map(value: Any, path: str, bad: _Bad) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _dict(value, path, bad).items():
        if not isinstance(v, str):
            bad(f"{path}.{k}", f"expected a string, got {describe(v)}")
            continue
        out[str(k)] = v
    return out


def _env(value: Any, path: str, bad: _Bad) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, item in enumerate(_list(value, path, bad)):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            bad(f"{path}[{i}]", f"expected a mapping with 'name', got {describe(item)}")
            continue
        raw = item.get("value", "")
        out[item["name"]] = "" if raw is None else str(raw)
    return out


def _pick_container(containers: list[Any]) -> dict[str, Any]:
    dicts = [c for c in containers if isinstance(c, dict)]
    for c in dicts:
        if c.get("name") == "main":
            return c
    return dicts[0] if dicts else {}


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
