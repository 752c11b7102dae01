"""A fast Prometheus text parser for the few model-server metrics the scheduler reads.

It runs every 50 ms per endpoint, so it is hand-written: it jumps with ``str.find`` to the
lines of the names it needs, reads one metric family's contiguous samples and stops, and
never looks at the hundreds of other series a vLLM page has. It replaces
``prometheus_client``'s parser: 73 µs against 23.4 ms on tests/data/vllm-cpu-metrics.txt
(docs/PERFORMANCE.md). tests/endpoints/test_promtext_differential.py reads every sample of
real vLLM pages, and mutations of them, with both and asserts the same values; where the
page is malformed, ``prometheus_client`` refuses the whole page and this parser skips the
bad line (a scrape keeps what it can read). No input raises: NaN and ±Inf counts read as 0.
Metric names follow GIE's flags (:class:`MetricNames`); a spec may carry a label filter,
``name{k="v"}``.

When a page has several series of one gauge (one per ``engine`` or ``model_name``), queue
and running counts are summed, KV-cache usage takes the maximum, and prefix-cache counters
are summed. The LoRA info metric uses the series with the largest value (a timestamp), as
GIE does. Absent metrics read as 0 (GIE stores partial results too).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kvgate.scheduling.types import Metrics

_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric name with an optional label filter, parsed from ``name{k="v",...}``."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> MetricSpec:
        spec = spec.strip()
        brace = spec.find("{")
        if brace < 0:
            if not spec:
                raise ValueError("empty metric name")
            return cls(spec)
        if not spec.endswith("}"):
            raise ValueError(f'metric spec {spec!r}: expected name{{label="value",...}}')
        labels = tuple(_parse_labels(spec[brace + 1 : -1]).items())
        return cls(spec[:brace], labels)

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


def _spec(text: str) -> MetricSpec:
    return MetricSpec.parse(text)


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Which metrics to read, with GIE's defaults for vLLM (its flag names in comments)."""

    queued: MetricSpec = field(
        default_factory=lambda: _spec("vllm:num_requests_waiting")
    )  # --total-queued-requests-metric
    running: MetricSpec = field(
        default_factory=lambda: _spec("vllm:num_requests_running")
    )  # --total-running-requests-metric
    kv_usage: MetricSpec = field(
        default_factory=lambda: _spec("vllm:kv_cache_usage_perc")
    )  # --kv-cache-usage-percentage-metric
    # vLLM < 0.10 called it gpu_cache_usage_perc; read when the main name is absent.
    kv_usage_fallback: MetricSpec | None = field(
        default_factory=lambda: _spec("vllm:gpu_cache_usage_perc")
    )
    lora_info: MetricSpec | None = field(
        default_factory=lambda: _spec("vllm:lora_requests_info")
    )  # --lora-info-metric
    cache_info: MetricSpec | None = field(
        default_factory=lambda: _spec("vllm:cache_config_info")
    )  # --cache-info-metric
    prefix_queries: MetricSpec = field(
        default_factory=lambda: _spec("vllm:prefix_cache_queries_total")
    )
    prefix_hits: MetricSpec = field(default_factory=lambda: _spec("vllm:prefix_cache_hits_total"))

    @classmethod
    def from_flags(
        cls,
        *,
        queued: str | None = None,
        running: str | None = None,
        kv_usage: str | None = None,
        lora_info: str | None = None,
        cache_info: str | None = None,
    ) -> MetricNames:
        """Build from GIE-style flag values; None keeps the default, '' disables optional ones."""
        base = cls()
        return cls(
            queued=_spec(queued) if queued else base.queued,
            running=_spec(running) if running else base.running,
            kv_usage=_spec(kv_usage) if kv_usage else base.kv_usage,
            # an explicit kv name means the user knows the server: no fallback guessing
            kv_usage_fallback=None if kv_usage else base.kv_usage_fallback,
            lora_info=base.lora_info
            if lora_info is None
            else (_spec(lora_info) if lora_info else None),
            cache_info=base.cache_info
            if cache_info is None
            else (_spec(cache_info) if cache_info else None),
        )


@functools.lru_cache(maxsize=512)
def _parse_labels_cached(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(_parse_labels_uncached(text).items())


def _parse_labels(text: str) -> dict[str, str]:
    """Labels of a sample; memoised, since info metrics repeat the same long label text."""
    return dict(_parse_labels_cached(text))


def _parse_labels_uncached(text: str) -> dict[str, str]:
    labels = {}
    for match in _LABEL_RE.finditer(text):
        value = match.group(2)
        if "\\" in value:
            value = value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        labels[match.group(1)] = value
    return labels


def _series(text: str, spec: MetricSpec) -> Iterator[tuple[str, float]]:
    """(label text, value) of every sample line of ``spec.name`` matching its label filter."""
    name = spec.name
    n = len(name)
    pos = 0
    while True:
        i = text.find(name, pos)
        if i < 0:
            return
        pos = i + n
        # must start a line and be the whole name
        if i > 0 and text[i - 1] != "\n":
            continue
        if pos >= len(text):
            return
        nxt = text[pos]
        end = text.find("\n", pos)
        if end < 0:
            end = len(text)
        if nxt == "{":
            close = text.rfind("}", pos, end)
            if close < 0:
                continue
            label_text = text[pos + 1 : close]
            rest = text[close + 1 : end]
        elif nxt == " " or nxt == "\t":
            label_text = ""
            rest = text[pos:end]
        else:
            continue  # a longer name sharing the prefix
        # The samples of one family are contiguous in the text format: once the next line
        # opens another family, stop (saves scanning the rest). Not at the first line of
        # another name: a summary's or histogram's _count and _sum lines alternate.
        if text.startswith("# HELP ", end + 1) or text.startswith("# TYPE ", end + 1):
            pos = len(text)
        if spec.labels:
            labels = _parse_labels(label_text)
            if any(labels.get(k) != v for k, v in spec.labels):
                continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        yield label_text, value


def _sum(text: str, spec: MetricSpec) -> float | None:
    total = None
    for _, value in _series(text, spec):
        if value == value:  # skip NaN
            total = value if total is None else total + value
    return total


def _max(text: str, spec: MetricSpec) -> float | None:
    best = None
    for _, value in _series(text, spec):
        if value == value and (best is None or value > best):
            best = value
    return best


def _adapters(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(a.strip() for a in value.split(",") if a.strip())


def _int_label(labels: dict[str, str], key: str) -> int:
    try:
        return int(float(labels.get(key, "0")))
    except (ValueError, OverflowError):  # not a number, NaN or ±Inf
        return 0


def _count(value: float | None) -> int:
    """A gauge read as a count: NaN, ±Inf and absent read as 0 (never an exception)."""
    return int(value) if value is not None and math.isfinite(value) else 0


def parse_metrics(text: str, names: MetricNames | None = None, now: float | None = None) -> Metrics:
    """Parse a Prometheus text page into a :class:`Metrics` snapshot stamped ``now``.

    Absent metrics read as 0 (GIE stores partial results too).
    """
    names = names or MetricNames()
    queued = _sum(text, names.queued)
    running = _sum(text, names.running)
    kv = _max(text, names.kv_usage)
    if kv is None and names.kv_usage_fallback is not None:
        kv = _max(text, names.kv_usage_fallback)
    active: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    max_lora = 0
    if names.lora_info is not None:
        best_value = None
        best_labels = ""
        for label_text, value in _series(text, names.lora_info):
            if best_value is None or value > best_value:
                best_value, best_labels = value, label_text
        if best_value is not None:
            labels = _parse_labels(best_labels)
            active = _adapters(labels.get("running_lora_adapters"))
            waiting = _adapters(labels.get("waiting_lora_adapters"))
            max_lora = _int_label(labels, "max_lora")
    block_size = 0
    num_blocks = 0
    if names.cache_info is not None:
        for label_text, _ in _series(text, names.cache_info):
            labels = _parse_labels(label_text)
            block_size = _int_label(labels, "block_size")
            num_blocks = _int_label(labels, "num_gpu_blocks")
            break
    return Metrics(
        waiting_queue_size=_count(queued),
        running_requests_size=_count(running),
        kv_cache_usage_percent=float(kv or 0.0),
        active_models=active,
        waiting_models=waiting,
        max_active_models=max_lora,
        cache_block_size=block_size,
        cache_num_gpu_blocks=num_blocks,
        prefix_cache_queries=_sum(text, names.prefix_queries) or 0.0,
        prefix_cache_hits=_sum(text, names.prefix_hits) or 0.0,
        updated_at=time.monotonic() if now is None else now,
    )


__all__ = ["MetricNames", "MetricSpec", "parse_metrics"]
