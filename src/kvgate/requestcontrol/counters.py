"""Counters and gauges for the request path, without prometheus_client's per-call lock.

Replaces ``prometheus_client.Counter`` and ``Gauge`` for the series every request touches
(requests, running, scheduling attempts, picks, tokens: a dozen increments per request). The
library's ``inc`` takes a ``threading.Lock`` around a float (``MutexValue``): with a dozen calls
per request that was 4-5 % of the gateway's CPU per request (py-spy, ``kvgate serve --policy
llm-d-default``, 2026-12-07, docs/PERFORMANCE.md). Here a child is a plain float updated in
place: the request path and the scrape run on one event loop, so no lock is needed. As with
:mod:`.histogram`, one set of values may be exported under several names (``aliases``: GIE's
and llm-d's names for the same count), an alias keeping fewer labels being summed over the
ones it leaves out at scrape time, so twin series cost one increment, not two.

Exposition stays the library's: :meth:`collect` yields its ``CounterMetricFamily`` /
``GaugeMetricFamily`` (a counter with its ``_created`` sample, as the library writes it).
``tests/requestcontrol/test_counters.py`` makes the same calls on these and on
prometheus_client's classes and compares the text, hostile values included (NaN, infinities,
negative increments refused as the library refuses them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

Alias = tuple[str, str] | tuple[str, str, Sequence[str]]
#: (name, help, label names, their positions in the metric's own labels; None: all of them)
ExportName = tuple[str, str, tuple[str, ...], tuple[int, ...] | None]


def export_names(
    name: str, documentation: str, labelnames: tuple[str, ...], aliases: Sequence[Alias]
) -> list[ExportName]:
    """The names one set of values is exported under: its own, then each alias's (an alias
    may keep a subset of the labels; its samples are then summed over the others)."""
    names: list[ExportName] = [(name, documentation, labelnames, None)]
    for alias in aliases:
        kept = tuple(alias[2]) if len(alias) == 3 else labelnames
        if not set(kept) <= set(labelnames):
            raise ValueError(f"{alias[0]}: labels {kept} are not among {labelnames}")
        positions = None if kept == labelnames else tuple(map(labelnames.index, kept))
        names.append((alias[0], alias[1], kept, positions))
    return names


class CounterChild:
    """One label set's count; ``inc`` is the hot path."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One label set's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Family(Collector):
    """Labelled children exported under a name and its aliases (see the module docstring)."""

    _child_type: type[CounterChild] | type[GaugeChild]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = None,
        aliases: Sequence[Alias] = (),
    ) -> None:
        self._labelnames = tuple(labelnames)
        self._names = export_names(name, documentation, self._labelnames, aliases)
        self._children: dict[tuple[str, ...], CounterChild | GaugeChild] = {}
        if not labelnames:
            self._children[()] = self._child_type()
        if registry is not None:
            registry.register(self)

    def _child(self, values: tuple[str, ...]) -> CounterChild | GaugeChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"expected {len(self._labelnames)} label values, got {len(values)}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._child_type()
        return child

    def _unlabelled(self) -> CounterChild | GaugeChild:
        if self._labelnames:
            raise ValueError("this metric has labels: use .labels(...)")
        return self._children[()]

    def _rows(
        self, positions: tuple[int, ...] | None
    ) -> list[tuple[tuple[str, ...], float, float]]:
        """(labels, value, created) per child, summed over the labels an alias drops (the
        earliest creation time kept)."""
        rows = [
            (labels, c.value, getattr(c, "created", 0.0)) for labels, c in self._children.items()
        ]
        if positions is None:
            return rows
        merged: dict[tuple[str, ...], list[float]] = {}
        for labels, value, created in rows:
            key = tuple(labels[i] for i in positions)
            acc = merged.get(key)
            if acc is None:
                merged[key] = [value, created]
            else:
                acc[0] += value
                acc[1] = min(acc[1], created)
        return [(key, acc[0], acc[1]) for key, acc in merged.items()]


class Counter(_Family):
    """A monotonic count with prometheus_client's exposition (``<name>_total``)."""

    _child_type = CounterChild

    def labels(self, *values: str) -> CounterChild:
        child = self._child(values)
        assert isinstance(child, CounterChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(n, doc, labels=ls) for n, doc, ls, _ in self._names]

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, labelnames, positions in self._names:
            family = CounterMetricFamily(name, doc, labels=labelnames)
            for labels, value, created in self._rows(positions):
                family.add_metric(list(labels), value, created=created)
            yield family


class Gauge(_Family):
    """A value that goes up and down, with prometheus_client's exposition."""

    _child_type = GaugeChild

    def labels(self, *values: str) -> GaugeChild:
        child = self._child(values)
        assert isinstance(child, GaugeChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        child = self._unlabelled()
        assert isinstance(child, GaugeChild)
        child.dec(amount)

    def set(self, value: float) -> None:
        child = self._unlabelled()
        assert isinstance(child, GaugeChild)
        child.set(value)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(n, doc, labels=ls) for n, doc, ls, _ in self._names]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, doc, labelnames, positions in self._names:
            family = GaugeMetricFamily(name, doc, labels=labelnames)
            for labels, value, _ in self._rows(positions):
                family.add_metric(list(labels), value)
            yield family
