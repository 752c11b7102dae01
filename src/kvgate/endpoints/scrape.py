"""Model-server scraping: one task per endpoint reads ``/metrics`` and probes ``/health``.

The parser lives in :mod:`kvgate.endpoints.promtext` and is re-exported here, so
``from kvgate.endpoints.scrape import MetricNames, Scraper, parse_metrics`` is the whole API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import aiohttp
import msgspec

from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.promtext import MetricNames, MetricSpec, parse_metrics
from kvgate.scheduling.types import Endpoint, Metrics

log = logging.getLogger("kvgate.endpoints")


#: ``await probe(endpoint)`` -> healthy; may have ``async close()`` (called by ``stop``).
HealthProbe = Callable[[Endpoint], Awaitable[bool]]


class _ModelList(msgspec.Struct):
    data: list[dict[str, object]] = []


_models_decoder = msgspec.json.Decoder(_ModelList)


@dataclass(slots=True)
class _EndpointState:
    """What the scraper knows of one endpoint between scrapes."""

    task: asyncio.Task[None] | None = None
    last_scrape_ok: float = 0.0  # monotonic time of the last good /metrics
    last_health_check: float = 0.0
    health_ok: bool = False
    refused: bool = False  # the last scrape could not connect at all
    forced_out_until_scrape: bool = False  # the gateway saw a connection failure
    models: frozenset[str] | None = None
    model_entries: tuple[dict[str, object], ...] = ()  # /v1/models data, as served
    last_models: float = 0.0
    in_rotation: bool = False


class Scraper:
    """One background task per endpoint: scrape ``/metrics``, probe ``/health``, set rotation.

    An endpoint is in rotation while its last ``/health`` probe answered 200 and its last
    successful scrape is at most ``staleness_s`` old. A refused connection takes it out at
    once; the gateway may also call :meth:`mark_failed` after a failed forward. It comes
    back after a good scrape and a good health probe. Endpoints added to or removed from the
    pool at run time get or lose their task through the pool's listeners.

    Usage::

        scraper = Scraper(pool, interval_s=0.05)
        await scraper.start()   # on the serving event loop
        ...
        await scraper.stop()
    """

    def __init__(
        self,
        pool: EndpointPool,
        interval_s: float = 0.05,
        names: MetricNames | None = None,
        scheme: str | None = None,
        verify_tls: bool = True,
        *,
        timeout_s: float = 5.0,
        staleness_s: float = 2.0,
        health_interval_s: float = 1.0,
        health_path: str = "/health",
        metrics_path: str = "/metrics",
        models_interval_s: float = 5.0,
        fetch_models: bool = True,
        names_for: Callable[[Endpoint], MetricNames] | None = None,
        metrics_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        collect_metrics: bool = True,
        static_metrics: Mapping[str, Metrics] | None = None,
        models_path: str = "/v1/models",
        models_scheme: str | None = None,
        models_ssl: ssl.SSLContext | bool | None = None,
        health_probe: HealthProbe | None = None,
    ) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.names = names or MetricNames()
        self.scheme = scheme  # overrides each endpoint's scheme for scrapes (GIE's --model-server-metrics-scheme)
        self.verify_tls = verify_tls
        self.timeout_s = timeout_s
        self.staleness_s = max(staleness_s, 2 * interval_s)
        self.health_interval_s = health_interval_s
        self.health_path = health_path
        self.metrics_path = metrics_path
        self.models_interval_s = models_interval_s
        self.fetch_models = fetch_models
        # From llm-d's dataLayer (kvgate.config.datalayer.DataLayerConfig.scraper_kwargs):
        # per-endpoint metric names (engine label), the metrics port, TLS, and whether
        # /metrics is read at all (off: freshness follows the health probe alone).
        self.names_for = names_for
        self.metrics_port = metrics_port
        self.ssl_context = ssl_context
        self.collect_metrics = collect_metrics
        # mock-metrics-source (a test double): endpoint name or host:port -> the metrics
        # written on every tick instead of a /metrics scrape
        self.static_metrics = static_metrics
        # models-data-source: where and how /v1/models is polled (None: the endpoint's
        # scheme, the session's TLS settings)
        self.models_path = models_path
        self.models_scheme = models_scheme
        self.models_ssl = models_ssl
        # gRPC-only model servers (kvgate.endpoints.grpc_health): probed with their API's
        # health RPC instead of GET health_path
        self.health_probe = health_probe
        self._states: dict[str, _EndpointState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self.scrapes_total = 0
        self.scrape_errors_total = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        ssl_arg: ssl.SSLContext | bool = (
            self.ssl_context if self.ssl_context is not None else bool(self.verify_tls)
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ssl_arg, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            auto_decompress=True,
        )
        self.pool.on_added(self._on_added)
        self.pool.on_removed(self._on_removed)
        for endpoint in self.pool.all():
            self._spawn(endpoint)

    async def stop(self) -> None:
        tasks = [s.task for s in self._states.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._states.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        close = getattr(self.health_probe, "close", None)
        if close is not None:
            await close()
        self._started = False

    # --- queries for the gateway ------------------------------------------------------------

    def models_of(self, name: str) -> frozenset[str] | None:
        """Models the endpoint lists in /v1/models, or None while unknown."""
        state = self._states.get(name)
        return None if state is None else state.models

    def all_models(self) -> set[str]:
        models: set[str] = set()
        for name, state in self._states.items():
            if state.models and self.pool.is_healthy(name):
                models |= state.models
        return models

    def model_entries(self) -> list[dict[str, object]]:
        """The /v1/models entries of endpoints in rotation, one per model id."""
        seen: dict[str, dict[str, object]] = {}
        for name, state in self._states.items():
            if self.pool.is_healthy(name):
                for entry in state.model_entries:
                    seen.setdefault(str(entry["id"]), entry)
        return list(seen.values())

    def mark_failed(self, name: str) -> None:
        """Take an endpoint out of rotation until its next good scrape and health probe."""
        state = self._states.get(name)
        if state is not None:
            state.forced_out_until_scrape = True
            state.health_ok = False
            state.in_rotation = False
        self.pool.set_healthy(name, False)

    # --- per-endpoint tasks -----------------------------------------------------------------

    def _on_added(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._spawn(endpoint)

    def _on_removed(self, names: Sequence[str]) -> None:
        for name in names:
            state = self._states.pop(name, None)
            if state is not None and state.task is not None:
                state.task.cancel()

    def _spawn(self, endpoint: Endpoint) -> None:
        if endpoint.name in self._states:
            return
        state = _EndpointState()
        self._states[endpoint.name] = state
        state.task = asyncio.get_running_loop().create_task(
            self._run(endpoint.name, state), name=f"scrape {endpoint.name}"
        )

    def _url(self, endpoint: Endpoint, path: str) -> str:
        scheme = self.scheme or endpoint.scheme
        return f"{scheme}://{endpoint.hostport}{path}"

    def _metrics_url(self, endpoint: Endpoint) -> str:
        if self.metrics_port is None:
            return self._url(endpoint, self.metrics_path)
        scheme = self.scheme or endpoint.scheme
        host = endpoint.hostport.rsplit(":", 1)[0]
        return f"{scheme}://{host}:{self.metrics_port}{self.metrics_path}"

    async def _run(self, name: str, state: _EndpointState) -> None:
        while True:
            endpoint = self.pool.get(name)
            if endpoint is None:
                return
            started = time.monotonic()
            try:
                await self._tick(endpoint, state, started)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one endpoint's surprise kill its task
                log.exception("scraping %s failed unexpectedly", name)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.interval_s - elapsed))

    async def _tick(self, endpoint: Endpoint, state: _EndpointState, now: float) -> None:
        assert self._session is not None
        session = self._session
        if self.static_metrics is not None:
            self._serve_static(endpoint, state)
        elif self.collect_metrics:
            await self._scrape_metrics(session, endpoint, state)
        else:  # dataLayer without a metrics source: freshness follows the health probe
            state.last_scrape_ok = time.monotonic()
            state.refused = False
        out = not state.in_rotation
        if not state.refused and (out or now - state.last_health_check >= self.health_interval_s):
            state.last_health_check = now
            if self.health_probe is not None:
                state.health_ok = await self.health_probe(endpoint)
            else:
                state.health_ok = await self._probe(self._url(endpoint, self.health_path))
            if state.health_ok:
                state.forced_out_until_scrape = False
        if (
            self.fetch_models
            and state.health_ok
            and (state.models is None or now - state.last_models >= self.models_interval_s)
        ):
            state.last_models = now
            entries = await self._fetch_models(self._models_url(endpoint))
            if entries is not None:
                state.model_entries = entries
                state.models = frozenset(str(e["id"]) for e in entries)
        fresh = time.monotonic() - state.last_scrape_ok <= self.staleness_s
        healthy = (
            state.health_ok and fresh and not state.refused and not state.forced_out_until_scrape
        )
        if healthy != state.in_rotation:
            log.info("endpoint %s %s rotation", endpoint.name, "enters" if healthy else "leaves")
        state.in_rotation = healthy
        self.pool.set_healthy(endpoint.name, healthy)

    def _models_url(self, endpoint: Endpoint) -> str:
        scheme = self.models_scheme or endpoint.scheme
        return f"{scheme}://{endpoint.hostport}{self.models_path}"

    def _serve_static(self, endpoint: Endpoint, state: _EndpointState) -> None:
        """mock-metrics-source: write the listed metrics, stamped now; freshness then
        follows the health probe, as when metrics are not collected."""
        assert self.static_metrics is not None
        metrics = self.static_metrics.get(endpoint.name) or self.static_metrics.get(
            endpoint.hostport
        )
        now = time.monotonic()
        if metrics is not None:
            self.pool.update_metrics(endpoint.name, replace(metrics, updated_at=now))
        state.last_scrape_ok = now
        state.refused = False

    async def _scrape_metrics(
        self, session: aiohttp.ClientSession, endpoint: Endpoint, state: _EndpointState
    ) -> None:
        self.scrapes_total += 1
        try:
            async with session.get(self._metrics_url(endpoint)) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message="bad status"
                    )
                text = await resp.text()
            names = self.names if self.names_for is None else self.names_for(endpoint)
            self.pool.update_metrics(endpoint.name, parse_metrics(text, names))
            state.last_scrape_ok = time.monotonic()
            state.refused = False
        except (aiohttp.ClientConnectorError, ConnectionRefusedError):
            self.scrape_errors_total += 1
            state.refused = True
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            self.scrape_errors_total += 1

    async def _probe(self, url: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _fetch_models(self, url: str) -> tuple[dict[str, object], ...] | None:
        assert self._session is not None
        # ssl=True defers to the session's connector (the metrics source's TLS settings)
        tls = self.models_ssl if self.models_ssl is not None else True
        try:
            async with self._session.get(url, ssl=tls) as resp:
                if resp.status != 200:
                    return None
                body = await resp.read()
            listing = _models_decoder.decode(body)
        except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError):
            return None
        return tuple(m for m in listing.data if isinstance(m.get("id"), str))


__all__ = ["MetricNames", "MetricSpec", "Scraper", "parse_metrics"]
