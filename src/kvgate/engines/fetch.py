"""Fetch ``hf://org/name`` models from the Hugging Face Hub, as KServe's storage initializer does.

KServe downloads an LLMInferenceService's ``hf://`` model before vLLM starts (and vLLM itself
would fetch a bare ``org/name``); ``kvgate up`` does the same with ``huggingface_hub``'s
``snapshot_download`` into the standard Hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
``~/.cache/huggingface/hub``), so a second run, vLLM and kvgate's tokenizer all find it there.
Progress bars are huggingface_hub's own (one per file, on stderr). ``HF_ENDPOINT`` and
``HF_TOKEN`` are honoured; ``--offline`` or ``HF_HUB_OFFLINE=1`` never reach this module
(:func:`kvgate.engines.model.resolve_model` refuses first, saying what to do).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kvgate.errors import EngineError
from kvgate.kvcache.tokenizer_files import hf_hub_cache

#: Weights in these formats are not fetched when safetensors exist (vLLM loads safetensors).
_SKIPPED_WHEN_SAFETENSORS = ("*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.gguf")


def fetch_hf_model(repo_id: str, *, say: bool = True) -> Path:
    """Download ``repo_id`` (``org/name``) into the Hub cache; its snapshot folder.

    Raises EngineError with one line naming the model, the endpoint and the reason.
    """
    from huggingface_hub import HfApi, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read per call, not at import
    cache = hf_hub_cache()
    ignore: list[str] | None = None
    # huggingface_hub logs a warning per retry; the failure is reported once, below
    hub_log = logging.getLogger("huggingface_hub")
    saved_level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        files = HfApi(endpoint=endpoint).list_repo_files(repo_id)
        if any(name.endswith(".safetensors") for name in files):
            ignore = list(_SKIPPED_WHEN_SAFETENSORS)
        if say:
            print(
                f"kvgate up: fetching hf://{repo_id} ({len(files)} files) from "
                f"{endpoint or 'https://huggingface.co'} into {cache}",
                flush=True,
            )
        folder = snapshot_download(
            repo_id, cache_dir=cache, endpoint=endpoint, ignore_patterns=ignore
        )
    except Exception as exc:  # huggingface_hub's HTTP and I/O errors, converted here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineError(
            f"model {repo_id}: download from {endpoint or 'the Hugging Face Hub'} failed: "
            f"{reason} (set HF_TOKEN for a gated model, fetch it yourself and pass its folder, "
            "or simulate it with --engine sim)"
        ) from exc
    finally:
        hub_log.setLevel(saved_level)
    return Path(folder)
