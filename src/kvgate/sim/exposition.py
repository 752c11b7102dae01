"""Prometheus text exposition for the simulator, cheap enough for 20 scrapes a second.

:func:`render_text` writes exactly what ``prometheus_client.generate_latest`` writes for
metric names that need no escaping (every ``vllm:`` name), reusing formatted label strings;
:class:`FastHistogram` is a one-label-set histogram whose ``observe`` is a bisect and whose
text comes from pre-formatted line prefixes. A test holds both byte-equal to prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _float_to_go

__all__ = ["FastHistogram", "HistogramCollector", "floatToGoString", "render_text"]


def floatToGoString(value: float) -> str:
    """Prometheus' float text (``+Inf``, Go-style exponents), typed."""
    return str(_float_to_go(value))  # type: ignore[no-untyped-call]


_OM_SUFFIXES = ("_created", "_gsum", "_gcount")


def _label_text(sample: Sample, cache: dict[tuple[tuple[str, str], ...], str]) -> str:
    key = tuple(sorted(sample.labels.items()))
    text = cache.get(key)
    if text is None:
        inner = ",".join(
            '{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
            for k, v in key
        )
        text = "{" + inner + "}" if inner else ""
        if len(cache) < 4096:  # label sets are few; the cap only guards against a leak
            cache[key] = text
    return text


def render_text(
    registry: CollectorRegistry, cache: dict[tuple[tuple[str, str], ...], str]
) -> bytes:
    """Prometheus text format, byte for byte what ``prometheus_client.generate_latest`` writes
    for kvgate's metric names (legal legacy names, so no escaping), at a fraction of its cost:
    label strings are formatted once and reused. The gateway scrapes every 50 ms, so this is
    on the simulator's hot path."""
    out: list[str] = []
    append = out.append
    for metric in registry.collect():
        name = metric.name
        mname = name
        mtype = metric.type
        if mtype == "counter":
            mname = name + "_total"
        elif mtype == "info":
            mname = name + "_info"
            mtype = "gauge"
        elif mtype == "stateset":
            mtype = "gauge"
        elif mtype == "gaugehistogram":
            mtype = "histogram"
        elif mtype == "unknown":
            mtype = "untyped"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
        extra: dict[str, list[str]] = {}
        for sample in metric.samples:
            line = f"{sample.name}{_label_text(sample, cache)} {floatToGoString(sample.value)}"
            if sample.timestamp is not None:
                line += f" {int(float(sample.timestamp) * 1000):d}"
            line += "\n"
            sname = sample.name
            if (
                sname.endswith(_OM_SUFFIXES)
                and sname[len(name) :] in _OM_SUFFIXES
                and sname.startswith(name)
            ):
                extra.setdefault(sname[len(name) :], []).append(line)
            else:
                append(line)
        for suffix, lines in sorted(extra.items()):
            append(f"# HELP {name}{suffix} {doc}\n# TYPE {name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")


class FastHistogram:
    """A Prometheus histogram with one label set: ``observe`` is a bisect and an add, and its
    text is rendered from pre-formatted line prefixes (as prometheus_client would write it)."""

    __slots__ = (
        "_bucket_prefixes",
        "_counts",
        "_label_text",
        "bounds",
        "created",
        "doc",
        "labels",
        "name",
        "sum",
    )

    def __init__(
        self,
        name: str,
        doc: str,
        buckets: tuple[float, ...],
        labels: dict[str, str],
        created: float,
    ) -> None:
        self.name = name
        self.doc = doc
        self.bounds = [float(b) for b in buckets]
        self.labels = dict(labels)
        self.created = created
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        items = sorted(labels.items())
        self._label_text = "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"
        prefixes = []
        for bound in [*self.bounds, float("inf")]:
            with_le = sorted([*items, ("le", floatToGoString(bound))])
            prefixes.append(f"{name}_bucket{{" + ",".join(f'{k}="{v}"' for k, v in with_le) + "} ")
        self._bucket_prefixes = prefixes

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        out = []
        total = 0
        for c in self._counts:
            total += c
            out.append(total)
        return out

    def render(self) -> str:
        doc = self.doc.replace("\\", r"\\").replace("\n", r"\n")
        name = self.name
        lines = [f"# HELP {name} {doc}\n# TYPE {name} histogram\n"]
        cum = self.cumulative()
        for prefix, count in zip(self._bucket_prefixes, cum, strict=True):
            lines.append(
                prefix + (f"{count}.0" if count < 1_000_000 else floatToGoString(count)) + "\n"
            )
        total = cum[-1]
        total_text = f"{total}.0" if total < 1_000_000 else floatToGoString(total)
        lines.append(f"{name}_count{self._label_text} {total_text}\n")
        lines.append(f"{name}_sum{self._label_text} {floatToGoString(self.sum)}\n")
        lines.append(f"# HELP {name}_created {doc}\n# TYPE {name}_created gauge\n")
        lines.append(f"{name}_created{self._label_text} {floatToGoString(self.created)}\n")
        return "".join(lines)

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        cum = self.cumulative()
        les = [floatToGoString(b) for b in [*self.bounds, float("inf")]]
        fam.add_metric(list(self.labels.values()), list(zip(les, cum, strict=True)), self.sum)
        fam.samples.append(Sample(self.name + "_created", dict(self.labels), self.created))
        return fam


class HistogramCollector(Collector):
    def __init__(self, histograms: list[FastHistogram]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for h in self.histograms:
            yield h.family()
