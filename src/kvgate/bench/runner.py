"""Drive an OpenAI-compatible server with a workload and time every request.

Load is either open-loop (sessions start at Poisson or evenly spaced arrivals at a rate, or
at a ladder of rates, or at the timestamps of a trace) or closed-loop (a fixed number of
concurrent clients). A run stops issuing at ``max_requests`` or ``duration_s``, whichever
comes first, and waits for requests in flight (each bounded by ``request_timeout_s``).
Requests stream (``stream: true`` with ``stream_options.include_usage``) so the time to the
first token and the gaps between tokens are measured at the client; ``ignore_eos`` with
``max_tokens`` fixes output lengths. Every request ends as one :class:`RequestRecord`,
success or an error kind: ``http_<status>``, ``connect``, ``timeout``, ``stream_error``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp

from kvgate.bench.workloads import Session, Turn, Workload

ArrivalMode = Literal["poisson", "constant", "concurrency", "trace"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How requests are offered.

    ``rates`` (requests/s) is one rate or a ladder; each stage lasts ``stage_duration_s`` or
    ``stage_requests`` sessions (the last stage runs until the run's bounds). ``concurrency``
    applies to mode ``concurrency``.
    """

    mode: ArrivalMode = "poisson"
    rates: tuple[float, ...] = (1.0,)
    stage_duration_s: float | None = None
    stage_requests: int | None = None
    concurrency: int = 1
    max_requests: int | None = None
    duration_s: float | None = None
    seed: int = 0
    cycle: bool = False  # repeat the workload's sessions until max_requests / duration_s

    def describe(self) -> str:
        if self.mode == "concurrency":
            return f"concurrency {self.concurrency}"
        if self.mode == "trace":
            return "trace timestamps"
        rates = "→".join(f"{r:g}" for r in self.rates)
        return f"{self.mode} {rates} req/s"


@dataclass(slots=True)
class RequestRecord:
    """How one request went. Times are seconds; ``start_s`` is relative to the run start."""

    request_id: str
    session_id: str
    turn: int
    stage: int  # index into LoadSpec.rates (0 for concurrency and trace)
    start_s: float
    prompt_tokens: int  # from usage, else the workload's count
    max_tokens: int
    ttft_s: float | None = None
    e2e_s: float | None = None
    #: gaps between streamed chunks, each divided by the tokens its chunk carried (one entry
    #: per chunk; chunks hold one token unless the server batches them: ``stream_interval``)
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    status: int = 0
    error: str | None = None  # None on success
    served_by: str | None = None  # x-gateway-destination-endpoint-served, when the router says
    tenant: str = ""  # the session's tenant (multi-tenant workloads)
    #: failed requests: request sent -> the failure was known (an error status's headers,
    #: the timeout, the broken stream); how promptly the excess got its answer
    failed_after_s: float | None = None
    #: an HTTP error's body, cut to 200 characters ("" when the answer had none)
    error_body: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class RunConfig:
    base_url: str
    model: str | None = None  # None: the first id of GET /v1/models
    api_key: str | None = None
    request_timeout_s: float = 300.0
    ignore_eos: bool = True
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    #: > 1: ask the server to batch this many tokens per streamed chunk (vLLM's per-request
    #: ``stream_interval``; the first and last chunks are sent at once). Cuts the CPU that
    #: streaming costs the router and this client by that factor at large scales; ITL is
    #: then measured per chunk and divided by its tokens (``continuous_usage_stats``).
    stream_interval: int = 1
    #: Called with each measured request as it completes, the number issued so far, and
    #: whether that number is final (nothing more may be issued: the duration or request
    #: bound is reached); a non-empty answer (why) stops the run at once: no more
    #: requests are issued, and an open-loop run cancels those in flight and leaves them out
    #: of the records (a closed-loop one lets them finish). For callers whose
    #: verdict can be settled before the backlog drains (``kvgate bench capacity``'s probes).
    stop_when: Callable[[RequestRecord, int, bool], str | None] | None = None


class Progress:
    """What the runner reports while running; the CLI draws a rich bar from it."""

    def started(self, total: int | None) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def finished(self) -> None:
        pass


class RichProgress(Progress):
    """A live progress bar with ok / error counts and the current rate stage."""

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RProgress

        self._bar = RProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]} err {task.fields[err]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._label = label
        self._task: Any = None
        self._ok = 0
        self._err = 0

    def started(self, total: int | None) -> None:
        self._bar.start()
        self._task = self._bar.add_task(self._label, total=total, ok=0, err=0)

    def request_done(self, record: RequestRecord) -> None:
        if record.ok:
            self._ok += 1
        else:
            self._err += 1
        self._bar.update(self._task, advance=1, ok=self._ok, err=self._err)

    def finished(self) -> None:
        self._bar.stop()


def arrival_times(spec: LoadSpec, count: int) -> Iterator[tuple[float, int]]:
    """Yield ``(offset_s, stage)`` for up to ``count`` session starts (open-loop modes).

    Poisson gaps are exponential with mean 1/rate (seeded); ``constant`` spaces evenly.
    Stages switch after ``stage_duration_s`` seconds or ``stage_requests`` arrivals.
    """
    for rate in spec.rates:
        if rate <= 0:
            raise ValueError(f"request rate must be > 0, got {rate}")
    rng = random.Random(spec.seed)
    poisson = spec.mode == "poisson"
    t = 0.0
    stage = 0
    stage_start = 0.0
    in_stage = 0
    produced = 0
    while produced < count:
        rate = spec.rates[stage]
        candidate = t + (rng.expovariate(rate) if poisson else 1.0 / rate) if produced else 0.0
        if stage + 1 < len(spec.rates):
            dur = spec.stage_duration_s
            if dur is not None and candidate >= stage_start + dur:
                # memoryless: the next stage draws its first gap from its own start
                stage, stage_start, t, in_stage = stage + 1, stage_start + dur, stage_start + dur, 0
                continue
            if spec.stage_requests is not None and in_stage >= spec.stage_requests:
                stage, stage_start, in_stage = stage + 1, t, 0
                continue
        t = candidate
        in_stage += 1
        produced += 1
        yield t, stage


class Runner:
    """Runs one workload against one base URL; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        workload: Workload,
        load: LoadSpec,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
        time_scale: float = 1.0,
    ) -> None:
        self.config = config
        self.workload = workload
        self.load = load
        self.progress = progress or Progress()
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        # Model seconds per wall second (the simulator's --speed): arrivals, think times and
        # the duration bound are in model time, and so is every recorded duration.
        self._scale = time_scale
        self._wall_clock = clock
        self._records: list[RequestRecord] = []
        self.warmup_records: list[RequestRecord] = []
        #: Called between the warm-up and the measured phase (e.g. to scrape counters).
        self.after_warmup: Callable[[], None] | None = None
        self._warming = False
        self._active: tuple[Session, ...] = workload.sessions
        self._issued = 0
        self._t0 = 0.0
        self._deadline = float("inf")
        self._url = ""
        self._model = ""
        self._stopped = asyncio.Event()  # stop_when answered: the run ends now

    @property
    def max_requests(self) -> int:
        if self._warming:
            return sum(len(s.turns) for s in self._active)
        if self.load.cycle:
            return self.load.max_requests or 10**9
        total = sum(len(s.turns) for s in self._active)
        if self.load.max_requests is not None:
            total = min(total, self.load.max_requests)
        return total

    def _sessions(self) -> Iterator[Session]:
        """The phase's sessions, repeated (with a round suffix) when cycling."""
        yield from self._active
        round_no = 1
        while self.load.cycle and not self._warming and self._active:
            for s in self._active:
                yield replace(s, session_id=f"{s.session_id}-r{round_no}")
            round_no += 1

    def _clock(self) -> float:
        """Model time: wall time × time_scale."""
        return self._wall_clock() * self._scale

    async def run(self) -> tuple[list[RequestRecord], float]:
        """Run the load; returns the records (in completion order) and the wall time."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            self._model = self.config.model or await self._first_model(http)
            path = (
                "/v1/completions" if self.workload.api == "completions" else "/v1/chat/completions"
            )
            self._url = self.config.base_url.rstrip("/") + path
            warm = tuple(s for s in self.workload.sessions if s.warmup)
            if warm:
                # Warm-up: sent at the same load, waited for, not recorded.
                self._warming, self._active = True, warm
                self._t0 = self._clock()
                await self._run_phase(http)
                self.warmup_records, self._records, self._issued = self._records, [], 0
                self._warming = False
                if self.after_warmup is not None:
                    self.after_warmup()
            self._active = tuple(s for s in self.workload.sessions if not s.warmup)
            self.progress.started(self.max_requests)
            self._t0 = self._clock()
            if self.load.duration_s is not None:
                self._deadline = self._t0 + self.load.duration_s
            try:
                await self._run_phase(http)
            finally:
                self.progress.finished()
            wall = self._clock() - self._t0
        return self._records, wall

    async def _run_phase(self, http: aiohttp.ClientSession) -> None:
        if self.load.mode == "concurrency":
            await self._run_closed(http)
        else:
            await self._run_open(http)

    async def _first_model(self, http: aiohttp.ClientSession) -> str:
        url = self.config.base_url.rstrip("/") + "/v1/models"
        async with http.get(url, headers=self._headers()) as resp:
            resp.raise_for_status()
            body = await resp.json()
        return str(body["data"][0]["id"])

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _may_issue(self) -> bool:
        return (
            self._issued < self.max_requests
            and self._clock() < self._deadline
            and not self._stopped.is_set()
        )

    async def _run_open(self, http: aiohttp.ClientSession) -> None:
        tasks: list[asyncio.Task[None]] = []
        if self.load.mode == "trace" or self.workload.is_trace:
            sessions: Iterator[Session] = iter(self._active)
            schedule: Iterator[tuple[float, int]] = ((s.arrival_s or 0.0, 0) for s in self._active)
        else:
            sessions = self._sessions()
            schedule = arrival_times(self.load, self.max_requests)
        for session, (offset, stage) in zip(sessions, schedule, strict=False):
            delay = self._t0 + offset - self._clock()  # both in model time
            if delay > 0:
                await asyncio.sleep(delay / self._scale)
            if not self._may_issue():
                break
            tasks.append(asyncio.create_task(self._run_session(http, session, stage)))
        if not tasks:
            return
        everything = asyncio.gather(*tasks)
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait((everything, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if everything.done():
            await everything  # a session's own error propagates, as before stop_when
            return
        everything.cancel()  # stop_when: what is still in flight is cancelled
        await asyncio.gather(everything, return_exceptions=True)

    async def _run_closed(self, http: aiohttp.ClientSession) -> None:
        sessions = self._sessions()

        async def worker() -> None:
            while self._may_issue():
                session = next(sessions, None)
                if session is None:
                    return
                await self._run_session(http, session, 0)

        await asyncio.gather(*(worker() for _ in range(max(1, self.load.concurrency))))

    async def _run_session(self, http: aiohttp.ClientSession, session: Session, stage: int) -> None:
        for k, turn in enumerate(session.turns):
            if k and turn.think_time_s > 0:
                await asyncio.sleep(turn.think_time_s / self._scale)
            if not self._may_issue():
                return
            self._issued += 1
            record = await self._send(http, session, k, turn, stage)
            self._records.append(record)
            if not self._warming:
                self.progress.request_done(record)
                stop_when = self.config.stop_when
                # nothing more may be issued: the count issued is final (a session's later
                # turns count too, so the end of the arrival loop alone is not enough)
                if stop_when is not None and stop_when(record, self._issued, not self._may_issue()):
                    self._stopped.set()
            if not record.ok:
                return  # the conversation cannot go on without this turn

    def _body(self, turn: Turn) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": turn.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.config.temperature,
        }
        if self.config.ignore_eos:
            body["ignore_eos"] = True
            body["min_tokens"] = turn.max_tokens
        if self.config.stream_interval > 1:
            body["stream_interval"] = self.config.stream_interval
            body["stream_options"]["continuous_usage_stats"] = True
        if turn.prompt is not None:
            body["prompt"] = turn.prompt
        else:
            body["messages"] = list(turn.messages or ())
        body.update(self.config.extra_body)
        return body

    async def _send(
        self, http: aiohttp.ClientSession, session: Session, k: int, turn: Turn, stage: int
    ) -> RequestRecord:
        start = self._clock()
        rec = RequestRecord(
            request_id=f"{session.session_id}-t{k}",
            session_id=session.session_id,
            turn=k,
            stage=stage,
            start_s=start - self._t0,
            prompt_tokens=turn.prompt_tokens,
            max_tokens=turn.max_tokens,
            tenant=session.tenant,
        )
        headers = self._headers()
        headers.update(session.headers)
        headers["x-request-id"] = f"bench-{rec.request_id}"
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                await self._stream(http, turn, headers, rec, start)
        except TimeoutError:
            rec.error = rec.error or "timeout"  # an error status stays what it was
        except aiohttp.ClientConnectorError:
            rec.error = "connect"
        except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError):
            rec.error = rec.error or "stream_error"
        if rec.error is None:
            rec.e2e_s = self._clock() - start
        elif rec.failed_after_s is None:
            rec.failed_after_s = self._clock() - start
        return rec

    async def _stream(
        self,
        http: aiohttp.ClientSession,
        turn: Turn,
        headers: dict[str, str],
        rec: RequestRecord,
        start: float,
    ) -> None:
        async with http.post(self._url, json=self._body(turn), headers=headers) as resp:
            rec.status = resp.status
            rec.served_by = resp.headers.get("x-gateway-destination-endpoint-served")
            if resp.status != 200:
                rec.failed_after_s = self._clock() - start  # the answer, not its transfer
                rec.error = f"http_{resp.status}"
                body = await resp.read()
                rec.error_body = body[:200].decode("utf-8", "replace")
                return
            last = start
            last_tokens = 0  # completion tokens counted at the previous content chunk
            chunks = 0
            done = False
            async for raw_line in resp.content:
                line = raw_line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    rec.error = "stream_error"
                    return
                usage = event.get("usage")
                if usage:
                    rec.prompt_tokens = int(usage.get("prompt_tokens") or rec.prompt_tokens)
                    rec.output_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        rec.cached_tokens = int(details["cached_tokens"])
                if _has_content(event):
                    now = self._clock()
                    if chunks == 0:
                        rec.ttft_s = now - start
                    else:
                        # tokens in this chunk: from continuous usage when the server sends
                        # it (stream_interval > 1), else one per chunk
                        tokens = rec.output_tokens - last_tokens if usage else 1
                        rec.itl_s.append((now - last) / max(tokens, 1))
                    last = now
                    last_tokens = rec.output_tokens
                    chunks += 1
            if not done:
                rec.error = "stream_error"
                return
            if rec.output_tokens == 0:
                rec.output_tokens = chunks
            if rec.ttft_s is None:  # nothing streamed (max_tokens 0 or an empty answer)
                rec.ttft_s = self._clock() - start


def _has_content(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or ():
        if choice.get("text"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content"):
            return True
    return False


def run_sync(
    config: RunConfig,
    workload: Workload,
    load: LoadSpec,
    progress: Progress | None = None,
    time_scale: float = 1.0,
    after_warmup: Callable[[], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Run in a fresh event loop (uvloop when available)."""
    runner = Runner(config, workload, load, progress, time_scale=time_scale)
    runner.after_warmup = after_warmup
    try:
        import uvloop

        return uvloop.run(runner.run())
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(runner.run())


def stage_rates(load: LoadSpec, records: Sequence[RequestRecord]) -> dict[int, float]:
    """Offered rate of each stage that has records (open-loop modes only)."""
    if load.mode not in ("poisson", "constant"):
        return {}
    return {r.stage: load.rates[r.stage] for r in records if r.stage < len(load.rates)}
