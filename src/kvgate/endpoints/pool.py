"""The endpoint pool: which model-server ranks exist, which are in rotation, their metrics.

Discovery sources (a static list, an endpoints file, a Kubernetes InferencePool watch) call
:meth:`EndpointPool.set_endpoints` or :meth:`upsert`/:meth:`remove`; the metrics scraper
calls :meth:`update_metrics` and :meth:`set_healthy`; the request path reads
:meth:`candidates`. All on one event loop, so no locking. Removal listeners (the scheduler's
per-endpoint state, the KV-event subscriber) are told after an endpoint leaves.

With an :class:`~kvgate.endpoints.outlier.OutlierDetector`, :meth:`EndpointPool.candidates`
also leaves out endpoints whose circuit breaker is open (keeping the detector's ``min_hosts``
floor), and a removed endpoint's breaker is forgotten. Both front doors take their candidates
from here, so this is the one place ejection applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kvgate.endpoints.outlier import OutlierDetector
from kvgate.scheduling.types import Endpoint, Metrics

RemovalListener = Callable[[Sequence[str]], None]
AddListener = Callable[[Sequence[Endpoint]], None]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What discovery knows of an endpoint; the pool turns it into an :class:`Endpoint`."""

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "http"


class EndpointPool:
    """Endpoints by name, with a health flag each; see the module docstring."""

    def __init__(self, outlier: OutlierDetector | None = None) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._healthy: dict[str, bool] = {}
        self._removal_listeners: list[RemovalListener] = []
        self._add_listeners: list[AddListener] = []
        self.outlier: OutlierDetector | None = None
        if outlier is not None:
            self.set_outlier(outlier)

    def set_outlier(self, outlier: OutlierDetector) -> None:
        """Use ``outlier`` from now on (for wiring where the detector's metrics registry is
        made after the pool)."""
        self.outlier = outlier
        outlier.attach(self._rotation_size)

    # --- discovery side ---------------------------------------------------------------------

    def on_removed(self, listener: RemovalListener) -> None:
        self._removal_listeners.append(listener)

    def on_added(self, listener: AddListener) -> None:
        self._add_listeners.append(listener)

    def upsert(self, spec: EndpointSpec, *, healthy: bool = False) -> Endpoint:
        """Add an endpoint or update its address/labels in place (its metrics are kept).

        New endpoints start out of rotation until the first successful scrape, unless
        ``healthy`` is True.
        """
        existing = self._endpoints.get(spec.name)
        if existing is not None:
            if (existing.address, existing.port) != (spec.address, spec.port):
                existing.metrics = Metrics()
            existing.address = spec.address
            existing.port = spec.port
            existing.labels = dict(spec.labels)
            existing.scheme = spec.scheme
            return existing
        endpoint = Endpoint(
            name=spec.name,
            address=spec.address,
            port=spec.port,
            labels=dict(spec.labels),
            scheme=spec.scheme,
        )
        self._endpoints[spec.name] = endpoint
        self._healthy[spec.name] = healthy
        for listener in self._add_listeners:
            listener([endpoint])
        return endpoint

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove endpoints by name; returns the names that were present."""
        removed = [n for n in names if self._endpoints.pop(n, None) is not None]
        for name in removed:
            self._healthy.pop(name, None)
            if self.outlier is not None:
                self.outlier.forget(name)
        if removed:
            for listener in self._removal_listeners:
                listener(removed)
        return removed

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the pool exactly ``specs``: add new ones, update changed ones, remove the rest."""
        wanted = {s.name: s for s in specs}
        self.remove([n for n in self._endpoints if n not in wanted])
        for spec in wanted.values():
            self.upsert(spec)

    # --- health / metrics side --------------------------------------------------------------

    def update_metrics(self, name: str, metrics: Metrics) -> None:
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            endpoint.metrics = metrics

    def set_healthy(self, name: str, healthy: bool) -> None:
        if name in self._healthy:
            self._healthy[name] = healthy

    def is_healthy(self, name: str) -> bool:
        return self._healthy.get(name, False)

    # --- request side -----------------------------------------------------------------------

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def all(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def candidates(self) -> list[Endpoint]:
        """Endpoints in rotation (healthy, not ejected), in insertion order.

        Runs per request: with nothing ejected it costs one list comprehension, as without a
        detector.
        """
        healthy = [e for n, e in self._endpoints.items() if self._healthy.get(n, False)]
        if self.outlier is None or not self.outlier.any_out:
            return healthy
        return self.outlier.filter(healthy)

    def _rotation_size(self) -> int:
        """Healthy endpoints, ejected or not: the base of the detector's ejection floor."""
        return sum(1 for ok in self._healthy.values() if ok)

    def __len__(self) -> int:
        return len(self._endpoints)
