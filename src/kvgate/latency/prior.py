"""Starting weights for the latency models: zeros, or a calibrated simulator profile's.

A profile (``src/kvgate/data/sim-profiles/<name>.json``, its schema in docs/sim.md) prices
one engine step; its ``latency`` section maps onto the features of
:mod:`kvgate.latency.features`:

* TTFT of a lone request = ``a + b·new + c·new²`` plus ``e1·cached`` for a cached prefix, and
  work queued ahead of it costs roughly a prefill of its tokens (``b`` per token) plus one
  decode step per request running beside it (``d1``);
* TPOT of a request in a batch of ``B`` = ``d0 + d1·B``.

Only the JSON's ``latency`` object is read here (the core does not import the simulator); the
simulator's own loader, :func:`kvgate.sim.profiles.load_profile`, reads the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvgate.latency.features import TPOT_FEATURES, TTFT_FEATURES

__all__ = ["Prior", "load_prior", "profile_names", "zero_prior"]


@dataclass(frozen=True, slots=True)
class Prior:
    """Initial weights, in feature order; ``calibrated`` when they come from a profile."""

    ttft_weights: tuple[float, ...]
    tpot_weights: tuple[float, ...]
    calibrated: bool
    source: str


def zero_prior() -> Prior:
    return Prior((0.0,) * len(TTFT_FEATURES), (0.0,) * len(TPOT_FEATURES), False, "none")


def _profiles_dir() -> Path:
    return Path(str(resources.files("kvgate") / "data" / "sim-profiles"))


def profile_names() -> list[str]:
    """The calibrated profiles shipped in the package."""
    return sorted(p.stem for p in _profiles_dir().glob("*.json"))


def load_prior(name_or_path: str) -> Prior:
    """The prior of a shipped profile by name, or of a profile JSON file by path.

    Raises ValueError naming the file and the field when it cannot be read.
    """
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = _profiles_dir() / f"{name_or_path}.json"
        if not path.is_file():
            known = ", ".join(profile_names())
            raise ValueError(f"unknown latency profile {name_or_path!r} (known: {known})")
    try:
        latency = json.loads(path.read_text())["latency"]
        a = float(latency["prefill_base_ms"])
        b = float(latency["prefill_ms_per_token"])
        c = float(latency["prefill_ms_per_token_sq"])
        e1 = float(latency.get("cached_ms_per_token", 0.0))
        d0 = float(latency.get("decode_base_ms", 0.0))
        d1 = float(latency.get("decode_ms_per_seq", 0.0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: latency: expected the simulator profile schema ({exc})") from exc
    # feature scales: tokens/1e3, requests/10 (see kvgate.latency.features)
    ttft = (a, b * 1e3, c * 1e6, e1 * 1e3, b * 1e3, d1 * 10.0, 0.0, d1 * 10.0, 0.0)
    tpot = (d0, d1 * 10.0, 0.0, 0.0, 0.0, 0.0)
    assert len(ttft) == len(TTFT_FEATURES) and len(tpot) == len(TPOT_FEATURES)
    return Prior(ttft, tpot, True, path.stem)
