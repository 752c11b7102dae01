"""Where a model's tokenizer files come from: a path, a local map, discovery, the HF cache, the Hub.

:func:`find_tokenizer` turns a model name (``Qwen/Qwen3-0.6B``) or a path into the folder
(or ``tokenizer.json``) that :class:`kvgate.kvcache.tokenize.Tokenizer` loads. It tries, in
order, and takes the first that has the file:

1. the name itself as a path: a folder holding ``tokenizer.json``, or a ``tokenizer.json``;
2. ``local.modelTokenizerMap[model]`` (llm-d's ``LocalTokenizerConfig``; a map entry that
   does not exist is an error, never skipped);
3. auto-discovery under ``local.autoDiscoveryDir`` (llm-d's default ``$LOCAL_TOKENIZER_DIR``
   or ``/mnt/models``) for ``autoDiscoveryTokenizerFileName`` (``tokenizer.json``), naming a
   file ``org/name`` when a path component is a Hub cache folder ``models--org--name``,
   else by its folder relative to the root, as llm-d names them;
4. the Hugging Face cache: ``hf.tokenizersCacheDir`` when given, and the standard hub cache
   (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``), layout
   ``models--org--name/snapshots/<rev>/tokenizer.json`` (``refs/main`` first);
5. a download from the Hub with ``huggingface_hub`` (``tokenizer.json``, and
   ``tokenizer_config.json`` / ``chat_template.jinja`` when the repository has them) into
   that cache -- unless ``hf.enabled`` is false, the source is offline (``--offline``) or
   ``HF_HUB_OFFLINE=1``. ``HF_ENDPOINT`` and ``HF_TOKEN`` / ``hf.huggingFaceToken`` are
   honoured.

Nothing falls back silently: when every step fails, :class:`TokenizerNotFoundError` says
where it looked and what to give instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kvgate.errors import KvgateError

__all__ = [
    "DEFAULT_DISCOVERY_DIR",
    "TokenizerNotFoundError",
    "TokenizerSource",
    "find_tokenizer",
    "hf_hub_cache",
    "hub_offline",
]

#: llm-d's default root for auto-discovery (where KServe mounts the model), unless
#: ``LOCAL_TOKENIZER_DIR`` names another.
DEFAULT_DISCOVERY_DIR = "/mnt/models"
TOKENIZER_FILE = "tokenizer.json"
#: Files fetched beside tokenizer.json when the repository has them.
_COMPANION_FILES = ("tokenizer_config.json", "chat_template.jinja")


class TokenizerNotFoundError(KvgateError):
    """No tokenizer could be had for a model; the message names the model and the options."""


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache, found as huggingface_hub finds it (read per call)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def hub_offline(offline: bool = False) -> bool:
    """True when downloads are off: ``offline`` (``--offline``) or ``HF_HUB_OFFLINE`` set true."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return offline or value in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class TokenizerSource:
    """Where to look for tokenizers: llm-d's ``tokenizersPoolConfig`` plus ``--offline``.

    Field names follow llm-d-kv-cache's ``local`` and ``hf`` sections; empty strings mean
    "the default" (documented per field).
    """

    #: ``local.modelTokenizerMap``: model name -> tokenizer.json or the folder holding it.
    model_tokenizer_map: Mapping[str, str] = field(default_factory=dict)
    #: ``local.autoDiscoveryDir``; "" = ``$LOCAL_TOKENIZER_DIR`` or /mnt/models.
    auto_discovery_dir: str = ""
    #: ``local.autoDiscoveryTokenizerFileName``; "" = ``$LOCAL_TOKENIZER_FILENAME`` or tokenizer.json.
    auto_discovery_file_name: str = ""
    #: ``hf.enabled``: may the Hub be asked at all (llm-d's default: yes).
    hf_enabled: bool = True
    #: ``hf.huggingFaceToken``; "" = ``$HF_TOKEN`` (huggingface_hub's own lookup).
    hf_token: str = ""
    #: ``hf.tokenizersCacheDir``: a Hub cache to read and download into; "" = the standard one.
    hf_cache_dir: str = ""
    #: ``--offline``: never download (``HF_HUB_OFFLINE=1`` does the same).
    offline: bool = False

    def discovery_dir(self) -> Path:
        return Path(
            self.auto_discovery_dir
            or os.environ.get("LOCAL_TOKENIZER_DIR")
            or DEFAULT_DISCOVERY_DIR
        ).expanduser()

    def discovery_file_name(self) -> str:
        return (
            self.auto_discovery_file_name
            or os.environ.get("LOCAL_TOKENIZER_FILENAME")
            or TOKENIZER_FILE
        )

    def caches(self) -> list[Path]:
        """The Hub caches to read, the configured one first."""
        out = [Path(self.hf_cache_dir).expanduser()] if self.hf_cache_dir else []
        default = hf_hub_cache()
        return out if default in out else [*out, default]


def _as_tokenizer_path(path: Path) -> Path | None:
    if path.is_file():
        return path
    if (path / TOKENIZER_FILE).is_file():
        return path
    return None


def _hf_cache_model_name(component: str) -> str | None:
    """``models--Qwen--Qwen3-0.6B`` -> ``Qwen/Qwen3-0.6B`` (llm-d's discovery naming)."""
    if not component.startswith("models--"):
        return None
    parts = component.removeprefix("models--").split("--")
    return "/".join(parts) if parts and all(parts) else None


def discover(root: Path, file_name: str) -> dict[str, Path]:
    """Model name -> tokenizer file for every ``file_name`` under ``root`` (see step 3)."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for dirpath, _dirnames, filenames in os.walk(root):
        if file_name not in filenames:
            continue
        folder = Path(dirpath)
        rel = folder.relative_to(root)
        name = next(
            (n for n in map(_hf_cache_model_name, rel.parts) if n is not None), rel.as_posix()
        )
        found.setdefault(name, folder / file_name)
    return found


def cached_snapshot(cache: Path, repo_id: str, file_name: str = TOKENIZER_FILE) -> Path | None:
    """The snapshot folder of ``repo_id`` in the hub cache ``cache`` holding ``file_name``."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        if (snap / file_name).is_file():
            return snap
    return None


def _looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not model.startswith((".", "~"))


def download_tokenizer(model: str, source: TokenizerSource) -> Path:
    """Fetch ``model``'s tokenizer files from the Hub into the cache; its snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    cache = Path(source.hf_cache_dir).expanduser() if source.hf_cache_dir else hf_hub_cache()
    # endpoint and token read per call: huggingface_hub reads HF_ENDPOINT once, at import
    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = source.hf_token or None
    path = Path(
        hf_hub_download(model, TOKENIZER_FILE, cache_dir=cache, endpoint=endpoint, token=token)
    )
    for name in _COMPANION_FILES:
        try:
            hf_hub_download(model, name, cache_dir=cache, endpoint=endpoint, token=token)
        except EntryNotFoundError:
            continue  # the template may live in tokenizer_config.json only, or nowhere
    return path.parent


def find_tokenizer(model: str, source: TokenizerSource | None = None) -> Path:
    """The tokenizer folder or file for ``model`` (see the module docstring for the order).

    Raises :class:`TokenizerNotFoundError` naming the model, where it looked and the options.
    """
    source = source or TokenizerSource()
    ref = model.strip()
    if not ref:
        raise TokenizerNotFoundError("no model name or tokenizer path given")
    direct = _as_tokenizer_path(Path(ref).expanduser())
    if direct is not None:
        return direct
    mapped = source.model_tokenizer_map.get(ref)
    if mapped is not None:
        found = _as_tokenizer_path(Path(mapped).expanduser())
        if found is None:
            raise TokenizerNotFoundError(
                f"local.modelTokenizerMap[{ref}]: {mapped} is not a tokenizer.json nor a "
                "folder holding one"
            )
        return found
    discovered = discover(source.discovery_dir(), source.discovery_file_name()).get(ref)
    if discovered is not None:
        return discovered
    looked = [f"local dir {source.discovery_dir()}"]
    if _looks_like_repo_id(ref):
        for cache in source.caches():
            snap = cached_snapshot(cache, ref)
            if snap is not None:
                return snap
            looked.append(f"HF cache {cache}")
        if source.hf_enabled and not hub_offline(source.offline):
            try:
                return download_tokenizer(ref, source)
            except Exception as exc:  # huggingface_hub's HTTP and I/O errors, converted here
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TokenizerNotFoundError(
                    f"tokenizer for model {ref!r}: not found locally ({', '.join(looked)}) and "
                    f"the Hub download failed: {reason}; give a local path "
                    "(--tokenizer PATH or tokenizersPoolConfig.local.modelTokenizerMap)"
                ) from exc
        why = (
            "downloads are off (--offline / HF_HUB_OFFLINE)"
            if source.hf_enabled
            else "hf.enabled is false"
        )
    else:
        why = "it is neither an existing path nor a Hub model id"
    raise TokenizerNotFoundError(
        f"tokenizer for model {ref!r} not found ({', '.join(looked)}; {why}): give "
        "--tokenizer PATH (a tokenizer.json or model folder), "
        "tokenizersPoolConfig.local.modelTokenizerMap, put it in the HF cache "
        f"(huggingface-cli download {ref} tokenizer.json tokenizer_config.json), or allow "
        "Hub downloads"
    )
