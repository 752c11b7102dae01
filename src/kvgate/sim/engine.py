"""The simulated engine: vLLM v1's scheduler loop as a model, on the real (or sped-up) clock.

Every step the engine
1. schedules running requests first (one token for each decode, the next chunk of each
   unfinished prefill), preempting the latest-arrived running request (recompute: its
   blocks are freed, it goes back to the front of the queue) when blocks run out;
2. admits waiting requests in arrival order while ``max_num_seqs`` and the token budget
   ``max_num_batched_tokens`` allow (chunked prefill), reusing cached prefix blocks;
3. prices the batch with the profile's :class:`LatencyModel` and waits that long
   (divided by ``speed``);
4. advances every scheduled request, samples one token for each that finished its prefill
   or decoded, and retires those that are done.

Queueing therefore comes only from the batch model. Timing stays on a modelled schedule:
each step starts where the previous one ended unless the process fell behind by more than
``lag_tolerance_s``, which is counted in ``lag_s`` and reported to ``on_lag`` (``/sim/stats``
and the ``kvgate_sim_schedule_lag_seconds`` histogram; the benchmark reports it).

A request's ``arrival_time`` is stamped when the HTTP server receives it, as vLLM's API server
does, and the model's TTFT counts from there. When nothing is running, the next step starts
at the later of the previous step's planned end and the earliest waiting arrival, so what
the process spends taking a request in (reading, parsing, tokenizing, waking the loop) is
absorbed into the modelled prefill instead of added to it. A step never holds a request that
arrived after the step began: it joins at the next step boundary. If taking a request in
took longer than its whole modelled step, the step ends at once and the excess is counted as
lag, like any other restart.

The model's times are when tokens should reach the client, but the process writes them out
only after a step completes (a timerfd wakes the engine on time to tens of microseconds,
:mod:`kvgate.sim.timer`; uvloop's own timers work on a millisecond grid): it wakes every
stream's handler, first tokens first, and each writes its chunk in turn (~20 µs each, so a
step that feeds 256 streams takes ~5 ms to fan out). The handlers report each written
token's error against its planned time (:meth:`Engine.observe_emit`); per kind of step
(producing first tokens, or decode only) an :class:`EmissionLead` fits the mean delay of a
step's writes against how many it has, and each step completes that far ahead of its
planned end (never more than half the step nor ``emit_lead_max_s``), so that its tokens
leave on schedule on average. The model's timestamps and vLLM's latency metrics stay the
planned ones; a process that falls behind is still counted as lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvgate.kvcache.events import KVCacheEvent
from kvgate.kvcache.hashing import BlockHash, block_hashes, none_hash
from kvgate.sim.kvcache import BlockMeta, KVCache
from kvgate.sim.output import TokenStream
from kvgate.sim.profiles import LatencyModel
from kvgate.sim.timer import PreciseTimer

__all__ = ["EmissionLead", "Engine", "EngineConfig", "EngineStats", "LoraAdapter", "SimRequest"]

log = logging.getLogger("kvgate.sim.engine")

WAITING, RUNNING, FINISHED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    name: str
    path: str
    lora_id: int  # 1-based, as vLLM's lora_int_id


@dataclass(frozen=True, slots=True)
class EngineConfig:
    block_size: int
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    speed: float = 1.0
    hash_algo: str = "sha256"
    offload_blocks: int = 0
    max_loras: int = 1
    enable_prefix_caching: bool = True
    lag_tolerance_s: float = 0.005
    #: The most a step may complete ahead of its planned end to make up for the process's own
    #: delay in writing its tokens out (0: never; see Engine.observe_emit).
    emit_lead_max_s: float = 0.005


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters read by /metrics (token counts as vLLM counts them)."""

    prompt_tokens: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_cached_gpu: int = 0
    prompt_tokens_cached_cpu: int = 0
    prompt_tokens_transferred: int = 0  # P/D: delivered by the KV connector
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions: int = 0
    steps: int = 0
    busy_model_s: float = 0.0
    lag_s: float = 0.0  # wall seconds the schedule was restarted late (process overloaded)
    lag_events: int = 0
    lag_s_max: float = 0.0  # the largest single restart
    # Wall seconds between a request's HTTP receipt and the engine receiving it (reading,
    # parsing, tokenizing): absorbed into the model's prefill while the engine is idle.
    intake_s_sum: float = 0.0
    intake_count: int = 0
    late_s_sum: float = 0.0  # wall seconds steps completed after their modelled end
    late_s_max: float = 0.0
    # What the model says clients should see (wall seconds, from each step's planned end):
    model_ttft_s_sum: float = 0.0
    model_ttft_count: int = 0
    model_itl_s_sum: float = 0.0
    model_itl_count: int = 0
    # Streamed tokens written out, and the wall seconds between each token's planned time and
    # its write (negative: written ahead): the emission error left after the lead.
    emit_count: int = 0
    emit_error_s_sum: float = 0.0
    emit_first_count: int = 0  # the same for first tokens alone
    emit_first_error_s_sum: float = 0.0
    finished: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("stop", "length", "abort", "error", "repetition"), 0)
    )


class EmissionLead:
    """How far ahead of plan one kind of step completes, so that its tokens leave on time.

    Once a step completes, the process wakes its streams' handlers and writes their chunks one
    after another, so the mean delay of a step's writes grows with how many it has:
    ``delay ≈ a + b·n``. Each finished step adds one point (n, the mean delay of its writes
    against the planned end, the lead it had added back); a and b are a least-squares fit with
    exponential forgetting (the last ~20 steps weigh most). Until two different n have been
    seen, b is 0 and the lead is the mean delay.
    """

    __slots__ = ("_s0", "_sx", "_sxx", "_sxy", "_sy", "last")

    FORGET = 0.95

    def __init__(self) -> None:
        self._s0 = self._sx = self._sy = self._sxx = self._sxy = 0.0
        #: The lead given to the latest step of this kind (wall seconds).
        self.last = 0.0

    def add(self, n: int, delay_s: float) -> None:
        f = self.FORGET
        self._s0 = self._s0 * f + 1.0
        self._sx = self._sx * f + n
        self._sy = self._sy * f + delay_s
        self._sxx = self._sxx * f + n * n
        self._sxy = self._sxy * f + n * delay_s

    def lead(self, n: int, cap_s: float) -> float:
        """The lead for a step that will write ``n`` tokens, within [0, cap_s]."""
        s0 = self._s0
        if s0 == 0.0:
            return 0.0
        det = s0 * self._sxx - self._sx * self._sx
        slope = 0.0
        if det > 1e-6 * s0 * s0:
            slope = max(0.0, (s0 * self._sxy - self._sx * self._sy) / det)
        value = (self._sy - slope * self._sx) / s0 + slope * n
        return min(max(value, 0.0), cap_s)


class _StepWrites:
    """The writes reported for one completed step (Engine.observe_emit)."""

    __slots__ = ("count", "kind", "lead", "n", "sum")

    def __init__(self, kind: EmissionLead, n: int, lead: float) -> None:
        self.kind = kind
        self.n = n
        self.lead = lead
        self.sum = 0.0
        self.count = 0


def _writes(scheduled: list[tuple[SimRequest, int, int]]) -> tuple[int, int]:
    """How many streamed first tokens, and other streamed tokens, a step will produce."""
    first = other = 0
    for req, num_new, computed in scheduled:
        if req.notify_each_token and computed + num_new >= len(req.token_ids):
            if req.num_output_tokens == 0:
                first += 1
            else:
                other += 1
    return first, other


class SimRequest:
    """One request inside the engine; the HTTP handler reads its outputs as they appear."""

    __slots__ = (
        "aborted",
        "arrival_time",
        "block_hashes",
        "block_ids",
        "cache_salt",
        "decode_start_time",
        "delivered",
        "emit_step",
        "finish_reason",
        "finished_block_ids",
        "finished_time",
        "first_scheduled_time",
        "first_token_time",
        "last_token_time",
        "lora",
        "max_tokens",
        "model_token_time",
        "notify_each_token",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_created_cache_tokens",
        "num_external_tokens",
        "num_output_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "on_finish",
        "queued_time",
        "request_id",
        "status",
        "stream",
        "token_ids",
        "waiter",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        stream: TokenStream,
        *,
        max_tokens: int,
        lora: LoraAdapter | None = None,
        cache_salt: str | None = None,
        arrival_time: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.stream = stream
        self.max_tokens = max_tokens
        self.lora = lora
        self.cache_salt = cache_salt
        self.status = WAITING
        self.aborted = False
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_blocks = 0
        self.num_cached_tokens = -1
        self.num_created_cache_tokens = 0  # prompt tokens this request put into the cache
        self.num_preemptions = 0
        self.block_ids: list[int] = []
        #: the blocks it held when it finished (a P/D prefill returns them as remote_block_ids)
        self.finished_block_ids: list[int] = []
        #: prompt tokens a KV connector delivered (P/D decode): admitted as computed
        self.num_external_tokens = 0
        self.block_hashes: list[BlockHash] = []
        self.finish_reason: str | None = None
        self.delivered = 0
        #: False for non-streaming requests: the handler is woken only when they finish.
        self.notify_each_token = True
        self.waiter: asyncio.Future[None] | None = None
        self.on_finish: Callable[[SimRequest], None] | None = None
        #: ``time.monotonic()`` when the HTTP server received the request (vLLM's arrival_time:
        #: TTFT and e2e latency count from it); 0 = stamped by :meth:`Engine.add`.
        self.arrival_time = arrival_time
        self.queued_time = 0.0  # when the engine received it (vLLM's QUEUED event)
        self.first_scheduled_time = 0.0  # modelled start of the step that first scheduled it
        self.first_token_time = 0.0
        self.decode_start_time = 0.0
        self.last_token_time = 0.0
        self.model_token_time = 0.0  # planned (modelled) time of the latest token
        self.emit_step = 0  # the engine's number for the step of the latest token
        self.finished_time = 0.0

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    async def wait_for_output(self) -> None:
        """Return when tokens beyond ``delivered`` exist or the request finished."""
        if self.status == FINISHED or self.num_output_tokens > self.delivered:
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiter = fut
        try:
            await fut
        finally:
            self.waiter = None

    async def wait_finished(self) -> None:
        """Return when the request finished (for whatever reason)."""
        loop = asyncio.get_running_loop()
        while self.status != FINISHED:
            fut = loop.create_future()
            self.waiter = fut
            try:
                await fut
            finally:
                self.waiter = None

    def _wake(self) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(None)


class Engine:
    """Continuous batching over a paged KV cache, timed by a :class:`LatencyModel`."""

    def __init__(
        self,
        config: EngineConfig,
        latency: LatencyModel,
        *,
        publish: Callable[[list[KVCacheEvent]], None] | None = None,
    ) -> None:
        self.config = config
        self.latency = latency
        self.kv = KVCache(
            config.num_gpu_blocks,
            config.block_size,
            offload_blocks=config.offload_blocks,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        self.publish = publish
        self.stats = EngineStats()
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.none_hash = none_hash(config.hash_algo)
        self._wake = asyncio.Event()
        self._stopped = False
        self._num_aborted = 0
        self.last_step_ms = 0.0
        #: Called with each finished request (metrics observe histograms there).
        self.on_finish: Callable[[SimRequest], None] | None = None
        self.on_step: Callable[[int, list[float]], None] | None = None
        #: Called with the wall seconds of each schedule restart (the process fell behind).
        self.on_lag: Callable[[float], None] | None = None
        #: How far ahead of its planned end a step completes (wall seconds): one model for
        #: steps that produce first tokens (TTFT), one for decode steps.
        self.lead_first = EmissionLead()
        self.lead_decode = EmissionLead()
        self._steps: dict[int, _StepWrites] = {}  # completed steps whose writes are reported
        self._step_seq = 0
        self._timer = PreciseTimer()

    # --- public API ------------------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        now = time.monotonic()
        req.queued_time = now
        if req.arrival_time <= 0.0 or req.arrival_time > now:
            req.arrival_time = now
        else:
            self.stats.intake_s_sum += now - req.arrival_time
            self.stats.intake_count += 1
        req.status = WAITING
        self.waiting.append(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away); its blocks are freed at the next step."""
        if req.status == FINISHED or req.aborted:
            return
        req.aborted = True
        self._num_aborted += 1
        self._wake.set()

    def observe_emit(self, req: SimRequest, error_s: float, *, first: bool = False) -> None:
        """``req``'s newest token was written ``error_s`` wall seconds after its planned time
        (``first``: it is the request's first token).

        In a step that produced first tokens only those count toward its lead (the other
        tokens are woken after them); in a decode step every token does.
        """
        st = self.stats
        st.emit_count += 1
        st.emit_error_s_sum += error_s
        if first:
            st.emit_first_count += 1
            st.emit_first_error_s_sum += error_s
        rec = self._steps.get(req.emit_step)
        if rec is not None and (first or rec.kind is self.lead_decode):
            rec.sum += error_s
            rec.count += 1

    def _fold_writes(self, before: int) -> None:
        """Fold the writes of steps numbered below ``before`` (all written by now) into the
        leads: each step's mean delay is its mean error plus the lead it completed with."""
        steps = self._steps
        for seq in [s for s in steps if s < before]:
            rec = steps.pop(seq)
            if rec.count:
                rec.kind.add(rec.n, rec.sum / rec.count + rec.lead)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def model_seconds(self, wall_s: float) -> float:
        """A wall-clock duration in the modelled clock (× speed)."""
        return wall_s * self.config.speed

    def cached_prefix_tokens(self, req: SimRequest) -> int:
        """Leading prompt tokens of ``req`` this engine's cache holds now (full blocks)."""
        n = len(req.token_ids)
        hit = self.kv.lookup(self._hashes(req, n), (n - 1) // self.config.block_size)
        return hit.num_blocks * self.config.block_size

    def reset_prefix_cache(self) -> bool:
        ok = self.kv.reset()
        self._flush_events()
        return ok

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._timer.close()

    async def _run(self) -> None:
        clock = time.monotonic
        speed = self.config.speed
        tolerance = self.config.lag_tolerance_s
        # The planned start of the next step: the last step's planned end (none yet).
        next_start = 0.0
        while not self._stopped:
            if self._num_aborted:
                self._drop_aborted()
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = clock()
            idle = not self.running
            if idle:
                # Nothing runs in the model: the step starts when the earliest waiting request
                # arrived (HTTP receipt), or when the previous step ended if that is later. The
                # process's own time since the arrival is absorbed into this step.
                first = min(r.arrival_time for r in self.waiting)
                start = min(max(next_start, first), now)
            elif now - next_start > tolerance:
                # The process fell behind the modelled schedule (CPU starved): restart it
                # from now and count the lag, rather than compressing later steps.
                self._count_lag(now - next_start)
                start = now
            else:
                start = next_start
            scheduled, loaded = self._schedule(start)
            self._flush_events()
            if not scheduled:
                # Nothing fits right now (only possible while every waiting request is
                # deferred); wait for a change instead of spinning.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                next_start = clock()
                continue
            step_ms = self._price(scheduled, loaded)
            self.last_step_ms = step_ms
            self.stats.steps += 1
            self.stats.busy_model_s += step_ms / 1000.0
            end = start + step_ms / 1000.0 / speed
            if idle and now - end > tolerance:
                # Taking the request in took longer than its whole modelled step: the step
                # ends now, and the excess is lag (the model's TTFT was not met).
                self._count_lag(now - end)
                end = now
            # Complete ahead by the emission lead (at most half the step), so that the
            # tokens are written when the model says. (The previous step's writes are still
            # to come: they run once this loop yields.)
            self._step_seq += 1
            seq = self._step_seq
            self._fold_writes(seq - 1)
            n_first, n_other = _writes(scheduled)
            kind = self.lead_first if n_first else self.lead_decode
            lead = kind.lead(
                n_first or n_other, min(self.config.emit_lead_max_s, 0.5 * (end - start))
            )
            kind.last = lead
            if n_first or n_other:
                self._steps[seq] = _StepWrites(kind, n_first or n_other, lead)
            target = end - lead
            if target - clock() <= 0.00005:
                await asyncio.sleep(0)  # always let I/O run between steps
            else:
                await self._timer.sleep_until(target)
            done = clock()
            late = done - end
            if late > 0:
                st = self.stats
                st.late_s_sum += late
                if late > st.late_s_max:
                    st.late_s_max = late
            # (times recorded for vLLM's metrics: the planned end when completed ahead)
            self._complete(scheduled, max(done, end), end, seq)
            self._flush_events()
            next_start = end

    def _count_lag(self, lag: float) -> None:
        st = self.stats
        st.lag_s += lag
        st.lag_events += 1
        if lag > st.lag_s_max:
            st.lag_s_max = lag
        if self.on_lag is not None:
            self.on_lag(lag)

    # --- scheduling ------------------------------------------------------------------------

    def _schedule(self, start: float) -> tuple[list[tuple[SimRequest, int, int]], int]:
        """The batch of a step that starts at ``start`` (modelled): (request, new tokens,
        computed tokens before the step) each, and the number of blocks loaded from CPU."""
        cfg = self.config
        bs = cfg.block_size
        kv = self.kv
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int, int]] = []
        running = self.running
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            num_new = min(len(req.token_ids) - req.num_computed_tokens, budget)
            need = -(-(req.num_computed_tokens + num_new) // bs) - len(req.block_ids)
            victim_was_req = False
            while need > kv.num_free_blocks:
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    victim_was_req = True
                    break
            if victim_was_req:
                break
            if need > 0:
                req.block_ids.extend(kv.allocate(need))
            scheduled.append((req, num_new, req.num_computed_tokens))
            self._cache_full_blocks(req, req.num_computed_tokens + num_new)
            budget -= num_new
            i += 1
        loaded = 0
        if not preempted and self.waiting:
            deferred: list[SimRequest] = []
            running_loras = {r.lora.name for r in running if r.lora is not None}
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                req = waiting[0]
                # A request that arrived after the step began waits for the next boundary
                # (the process may take it in late; the model must not schedule it early).
                if req.arrival_time > start or (
                    req.lora is not None
                    and req.lora.name not in running_loras
                    and len(running_loras) >= cfg.max_loras
                ):
                    deferred.append(waiting.popleft())
                    continue
                n_tokens = len(req.token_ids)
                hashes = self._hashes(req, n_tokens)
                hit = kv.lookup(hashes, (n_tokens - 1) // bs)
                local = hit.num_blocks * bs
                # KV a connector transferred counts as computed (never the last token)
                computed = max(local, min(req.num_external_tokens, n_tokens - 1))
                num_new = min(n_tokens - computed, budget)
                need = -(-(computed + num_new) // bs) - hit.num_blocks
                if not kv.can_allocate(hit, need):
                    break
                waiting.popleft()
                req.block_ids = kv.take_hit(hit) + kv.allocate(need)
                req.num_computed_tokens = computed
                req.num_cached_blocks = hit.num_blocks
                loaded += len(hit.cpu_hashes)
                st = self.stats
                st.prefix_queries += n_tokens
                st.prefix_hits += local
                if req.num_cached_tokens < 0:
                    # First admission: what the response reports as cached_tokens.
                    req.num_cached_tokens = computed
                    req.first_scheduled_time = start
                    cpu_tokens = len(hit.cpu_hashes) * bs
                    st.prompt_tokens += req.num_prompt_tokens
                    st.prompt_tokens_cached_gpu += local - cpu_tokens
                    st.prompt_tokens_transferred += computed - local
                    st.prompt_tokens_cached_cpu += cpu_tokens
                    st.prompt_tokens_computed += req.num_prompt_tokens - computed
                req.status = RUNNING
                running.append(req)
                if req.lora is not None:
                    running_loras.add(req.lora.name)
                scheduled.append((req, num_new, computed))
                self._cache_full_blocks(req, computed + num_new)
                budget -= num_new
            if deferred:
                waiting.extendleft(reversed(deferred))
        return scheduled, loaded

    def _preempt(self, req: SimRequest) -> None:
        self.kv.free_blocks(req.block_ids)
        req.block_ids = []
        req.num_computed_tokens = 0
        req.num_cached_blocks = 0
        req.num_preemptions += 1
        req.status = WAITING
        self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def _hashes(self, req: SimRequest, num_tokens: int) -> list[BlockHash]:
        """Block hashes of every full block in the first ``num_tokens`` tokens (memoised)."""
        bs = self.config.block_size
        have = len(req.block_hashes)
        want = num_tokens // bs
        if want > have:
            parent = req.block_hashes[-1] if have else self.none_hash
            extra = None
            if req.lora is not None or req.cache_salt is not None:
                extra = [self._extra_keys(req, i) for i in range(have, want)]
            req.block_hashes.extend(
                block_hashes(
                    req.token_ids[have * bs : want * bs],
                    bs,
                    algo=self.config.hash_algo,
                    extra_keys=extra,
                    parent=parent,
                )
            )
        return req.block_hashes

    @staticmethod
    def _extra_keys(req: SimRequest, block_index: int) -> tuple[object, ...] | None:
        # vLLM's generate_block_hash_extra_keys: LoRA name, then the cache salt on block 0.
        keys: list[object] = []
        if req.lora is not None:
            keys.append(req.lora.name)
        if block_index == 0 and req.cache_salt is not None:
            keys.append(req.cache_salt)
        return tuple(keys) if keys else None

    def _cache_full_blocks(self, req: SimRequest, num_tokens: int) -> None:
        bs = self.config.block_size
        full = num_tokens // bs
        start = req.num_cached_blocks
        if full <= start:
            return
        hashes = self._hashes(req, full * bs)
        lora = req.lora
        metas = []
        for i in range(start, full):
            metas.append(
                BlockMeta(
                    hashes[i],
                    hashes[i - 1] if i > 0 else None,
                    tuple(req.token_ids[i * bs : (i + 1) * bs]),
                    self._extra_keys(req, i),
                    lora.lora_id if lora is not None else None,
                    lora.name if lora is not None else None,
                )
            )
        created = self.kv.cache_blocks(req.block_ids[start:full], metas)
        if req.num_output_tokens == 0 and created:
            # vLLM's usage.prompt_tokens_details.created_cache_tokens (chat): prompt blocks
            # this request computed and cached.
            prompt_blocks = req.num_prompt_tokens // bs
            req.num_created_cache_tokens += max(0, min(full, prompt_blocks) - start) * bs
        req.num_cached_blocks = full

    def _price(self, scheduled: list[tuple[SimRequest, int, int]], loaded: int) -> float:
        prefills: list[tuple[int, int]] = []
        decodes = 0
        decode_ctx = 0
        for req, num_new, ctx in scheduled:
            if num_new == 1 and req.num_output_tokens > 0 and ctx == len(req.token_ids) - 1:
                decodes += 1
                decode_ctx += ctx
            else:
                prefills.append((num_new, ctx))
        return self.latency.step_ms(prefills, decodes, decode_ctx, loaded)

    # --- completing a step -----------------------------------------------------------------

    def _complete(
        self,
        scheduled: list[tuple[SimRequest, int, int]],
        now: float,
        planned: float,
        seq: int = 0,
    ) -> None:
        st = self.stats
        max_len = self.config.max_model_len
        generated = 0
        any_finished = False
        itl: list[float] = []
        later: list[SimRequest] = []  # woken after the first tokens, whose writes go first
        for req, num_new, _ in scheduled:
            if req.status != RUNNING:
                continue
            req.num_computed_tokens += num_new
            if req.num_computed_tokens < len(req.token_ids):
                continue  # a prefill chunk that is not the last one
            stream_ids = req.stream.ids
            k = req.num_output_tokens
            req.token_ids.append(stream_ids[k])
            req.num_output_tokens = k + 1
            generated += 1
            if k == 0:
                req.first_token_time = now
                req.decode_start_time = now
                st.model_ttft_s_sum += planned - req.arrival_time
                st.model_ttft_count += 1
            else:
                itl.append(now - req.last_token_time)
                st.model_itl_s_sum += planned - req.model_token_time
                st.model_itl_count += 1
            req.last_token_time = now
            req.model_token_time = planned
            req.emit_step = seq
            if req.num_output_tokens >= len(stream_ids):
                self._finish(req, req.stream.finish_reason, now, wake=False)
                any_finished = True
            elif len(req.token_ids) >= max_len:
                self._finish(req, "length", now, wake=False)
                any_finished = True
            elif not req.notify_each_token:
                continue
            if k == 0:
                req._wake()
            else:
                later.append(req)
        for req in later:
            req._wake()
        st.generation_tokens += generated
        if any_finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        if self.on_step is not None:
            self.on_step(sum(n for _, n, _ in scheduled), itl)

    def _finish(self, req: SimRequest, reason: str, now: float, *, wake: bool = True) -> None:
        req.finished_block_ids = req.block_ids
        self.kv.free_blocks(req.block_ids)
        req.block_ids = []
        req.status = FINISHED
        req.finish_reason = reason
        req.finished_time = now
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        if self.on_finish is not None:
            self.on_finish(req)
        if wake:
            req._wake()

    def _drop_aborted(self) -> None:
        now = time.monotonic()
        for req in [r for r in self.waiting if r.aborted]:
            self.waiting.remove(req)
            self._finish(req, "abort", now)
        if any(r.aborted for r in self.running):
            for req in self.running:
                if req.aborted:
                    self._finish(req, "abort", now)
            self.running = [r for r in self.running if r.status == RUNNING]
        self._num_aborted = 0

    def _flush_events(self) -> None:
        events = self.kv.events
        if events:
            self.kv.events = []
            if self.publish is not None:
                self.publish(events)
