"""What the ext_proc front door adds to the one request path: subset hints, body-less picks,
and its own two series.

Everything a routed request goes through — parsing, candidates, flow control, scheduling,
PreRequest and ResponseComplete hooks, metrics and the request log — is
:class:`kvgate.requestcontrol.control.RequestControl`, shared with the HTTP gateway. This
module keeps only what exists because Envoy is in front: the gateway's
``x-gateway-destination-endpoint-subset`` hint, GIE's random pick for requests without a body,
and the destination string Envoy's ORIGINAL_DST cluster reads.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Histogram

from kvgate.errors import NoCandidatesError
from kvgate.requestcontrol.control import RequestControl
from kvgate.requestcontrol.metrics import FAST_BUCKETS
from kvgate.scheduling.types import Endpoint, SchedulingResult


def _has_port(entry: str) -> bool:
    """``ip:port`` / ``[v6]:port`` rather than a bare address."""
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def _normalise(hostport: str) -> str:
    host, _, port = hostport.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def subset_filter(
    subset: Sequence[str] | None,
) -> Callable[[list[Endpoint]], list[Endpoint]] | None:
    """The gateway's subset hint as a candidate filter (None: no hint, every endpoint).

    GIE matches hint entries by IP (one pod = one IP); kvgate matches ``ip:port`` entries
    exactly and bare ``ip`` entries by address, which is the same on a cluster and still right
    when several replicas share an IP (loopback, host networking). An empty hint list means
    the gateway allows nothing: no candidates (503).
    """
    if subset is None:
        return None
    exact = {_normalise(s) for s in subset if _has_port(s)}
    hosts = {s.strip("[]") for s in subset if not _has_port(s)}

    def narrow(ready: list[Endpoint]) -> list[Endpoint]:
        return [
            e for e in ready if _normalise(e.hostport) in exact or e.address.strip("[]") in hosts
        ]

    return narrow


def destination_of(result: SchedulingResult) -> str:
    """Comma-joined ``ip:port`` of every primary target, as GIE's EPP names them."""
    return ",".join(t.hostport for t in result.primary.targets)


class Director:
    """The EPP's side of request control: one per server, shared by every ext_proc stream."""

    def __init__(
        self,
        control: RequestControl,
        rng: random.Random | None = None,
        *,
        subset_filter: bool = True,
    ) -> None:
        self.control = control
        self._rng = rng or random.Random(0)
        #: False with GIE's --disable-endpoint-subset-filter: the hint is ignored
        self.subset_filter = subset_filter
        r = control.metrics.registry
        self.decision = Histogram(
            "kvgate_epp_decision_duration_seconds",
            "Time from the end of the request body to the routing reply being built: parsing, "
            "scheduling, PreRequest hooks and the ext_proc messages (gRPC transport excluded).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.streams = Counter(
            "kvgate_epp_streams_total",
            "ext_proc streams (one per HTTP request through Envoy), by how they ended.",
            ["outcome"],
            registry=r,
        )
        self._stream_children = {o: self.streams.labels(o) for o in ("ok", "broken", "rejected")}

    def narrow(
        self, subset: Sequence[str] | None
    ) -> Callable[[list[Endpoint]], list[Endpoint]] | None:
        """The candidate filter for a stream's subset hint (None: every endpoint)."""
        return subset_filter(subset) if self.subset_filter else None

    def stream_ended(self, outcome: str) -> None:
        child = self._stream_children.get(outcome)
        if child is None:
            child = self._stream_children[outcome] = self.streams.labels(outcome)
        child.inc()

    def pick_without_body(self, subset: Sequence[str] | None) -> Endpoint:
        """A request without a body (GET /v1/models): any endpoint in rotation, as GIE does."""
        ready = self.control.pool.candidates()
        narrow = self.narrow(subset)
        candidates = narrow(ready) if narrow is not None else ready
        if not candidates:
            raise NoCandidatesError("no healthy endpoint is available")
        return self._rng.choice(candidates)
