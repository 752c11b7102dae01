"""Model-server metrics: a fast Prometheus text parser and a scraper task per endpoint.

The metric names follow GIE's flags (``--total-queued-requests-metric`` and friends, see
:class:`MetricNames`); a spec may carry a label filter, ``name{k="v"}``. The parser is
hand-written because it runs every 50 ms per endpoint: it jumps with ``str.find`` to the
lines of the few names it needs and never looks at the hundreds of others a vLLM page has
(about 20x faster than ``prometheus_client``'s parser on tests/data/vllm-cpu-metrics.txt,
see docs/PERFORMANCE.md).

When a page has several series of one gauge (one per ``engine`` or ``model_name``), queue
and running counts are summed, KV-cache usage takes the maximum, and prefix-cache counters
are summed. The LoRA info metric uses the series with the largest value (a timestamp), as
GIE does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import msgspec

from kvgate.endpoints.pool import EndpointPool
from kvgate.scheduling.types import Endpoint, Metrics

log = logging.getLogger("kvgate.endpoints")

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
        # The samples of one family are contiguous in the text format: once this line is
        # read, stop unless the next line is the same metric (saves scanning the rest).
        if not text.startswith(name, end + 1):
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
    except ValueError:
        return 0


def parse_metrics(text: str, names: MetricNames | None = None, now: float | None = None) -> Metrics:
    """Parse a Prometheus text page into a :class:`Metrics` snapshot stamped ``now``.

    Absent metrics read as 0 (GIE stores partial results too).
    """
    names = names or MetricNames()
    queued = _sum(text, names.queued) or 0.0
    running = _sum(text, names.running) or 0.0
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
        waiting_queue_size=int(queued),
        running_requests_size=int(running),
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
        ssl_arg: ssl.SSLContext | bool = bool(self.verify_tls)
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
        self.scrapes_total += 1
        try:
            async with session.get(self._url(endpoint, self.metrics_path)) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message="bad status"
                    )
                text = await resp.text()
            self.pool.update_metrics(endpoint.name, parse_metrics(text, self.names))
            state.last_scrape_ok = time.monotonic()
            state.refused = False
        except (aiohttp.ClientConnectorError, ConnectionRefusedError):
            self.scrape_errors_total += 1
            state.refused = True
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            self.scrape_errors_total += 1
        out = not state.in_rotation
        if not state.refused and (out or now - state.last_health_check >= self.health_interval_s):
            state.last_health_check = now
            state.health_ok = await self._probe(self._url(endpoint, self.health_path))
            if state.health_ok:
                state.forced_out_until_scrape = False
        if (
            self.fetch_models
            and state.health_ok
            and (state.models is None or now - state.last_models >= self.models_interval_s)
        ):
            state.last_models = now
            entries = await self._fetch_models(self._url(endpoint, "/v1/models"))
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
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    return None
                body = await resp.read()
            listing = _models_decoder.decode(body)
        except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError):
            return None
        return tuple(m for m in listing.data if isinstance(m.get("id"), str))


__all__ = ["MetricNames", "MetricSpec", "Scraper", "parse_metrics"]
