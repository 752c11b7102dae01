"""Turn request records into figures: percentiles, throughput, cache hits, balance, plots.

Definitions (the way vLLM's and inference-perf's benchmarks count):

- TTFT: request sent -> first streamed token; e2e: request sent -> stream end; ITL: every gap
  between streamed chunks, pooled over all requests; TPOT: (e2e - TTFT) / (output - 1).
- Percentiles interpolate linearly between order statistics (numpy's default method).
- Throughput: output tokens (and requests) of successful requests divided by the span from
  the first request sent to the last one finished.
- Hit rate from the server: Δ``vllm:prefix_cache_hits_total`` / Δ``vllm:prefix_cache_queries_total``
  summed over the replicas, scraped before and after the run; from usage:
  Σ ``usage.prompt_tokens_details.cached_tokens`` / Σ ``prompt_tokens`` (inference-perf's
  ``kv_cache_hit_percent``). ``hit_rate`` is the server's figure when replicas were scraped.
- Balance: requests finished per replica (Δ``vllm:request_success_total``), and the ratio of
  the busiest replica to the mean (1.0 = perfectly even).
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvgate.bench.outcomes import OutcomeCounts
from kvgate.bench.runner import RequestRecord

#: Keys every entry of results.json has (others may follow).
RESULT_KEYS: tuple[str, ...] = (
    "policy",
    "requests",
    "errors",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "itl_p50_s",
    "e2e_p90_s",
    "output_tok_s",
    "hit_rate",
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# --- replica counters --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaCounters:
    """The counters of one replica's /metrics that the report uses (all cumulative)."""

    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    requests_finished: float = 0.0
    prompt_tokens: float = 0.0
    #: kvgate sim only: wall seconds its engine restarted its modelled schedule late
    #: (``kvgate_sim_schedule_lag_seconds_sum``); 0 for real engines, which have no model.
    schedule_lag_s: float = 0.0

    def __sub__(self, other: ReplicaCounters) -> ReplicaCounters:
        return ReplicaCounters(
            self.prefix_cache_queries - other.prefix_cache_queries,
            self.prefix_cache_hits - other.prefix_cache_hits,
            self.requests_finished - other.requests_finished,
            self.prompt_tokens - other.prompt_tokens,
            self.schedule_lag_s - other.schedule_lag_s,
        )


#: The samples summed into :class:`ReplicaCounters`, in its field order.
_COUNTER_SAMPLES = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "kvgate_sim_schedule_lag_seconds_sum",
)


def parse_counters(text: str) -> ReplicaCounters:
    """Sum the relevant vLLM counters over all label sets of a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = dict.fromkeys(_COUNTER_SAMPLES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += float(sample.value)
    return ReplicaCounters(*sums.values())


def scrape_counters(base_urls: Iterable[str], timeout_s: float = 5.0) -> dict[str, ReplicaCounters]:
    """GET ``<url>/metrics`` of each replica; replicas that fail are left out."""
    out = {}
    for url in base_urls:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
                out[url] = parse_counters(resp.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            continue
    return out


# --- summaries ---------------------------------------------------------------------------------


@dataclass(slots=True)
class StageSummary:
    stage: int
    rate: float | None
    requests: int
    errors: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    output_tok_s: float
    req_s: float
    #: how the stage's requests ended (kvgate.bench.outcomes); every request counted once
    ok: int = 0
    rejected_429: int = 0
    unavailable_503: int = 0
    explicit_rejections: int = 0  # 429/503 with a body
    timeouts: int = 0
    other_errors: int = 0
    rejection_p90_s: float | None = None  # request sent -> 429/503 received
    #: output tokens the pool generated while this stage's load was offered (every request's
    #: tokens spread over its first-to-last token, clipped to the stage's window), per second:
    #: what a queueing gateway keeps up, where ``output_tok_s`` (this stage's own requests,
    #: over their whole span) also counts how long they waited
    generated_tok_s: float = 0.0


@dataclass(slots=True)
class Summary:
    """One row of the comparison (one policy or one run)."""

    policy: str
    requests: int
    errors: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    e2e_p90_s: float | None
    output_tok_s: float
    hit_rate: float | None
    hit_rate_source: str | None  # "server" (replica counters), "usage" or None
    hit_rate_server: float | None
    hit_rate_usage: float | None
    ttft_mean_s: float | None
    itl_p90_s: float | None
    itl_p99_s: float | None
    tpot_p50_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    req_s: float
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    errors_by_kind: dict[str, int]
    replica_requests: dict[str, float]
    balance_max_over_mean: float | None
    load: str = ""
    workload: str = ""
    stages: list[StageSummary] = field(default_factory=list)
    #: the machine's 1-minute load average when the run ended (contention shows up here)
    load_average_1m: float | None = None
    #: simulated replicas: wall seconds their engines fell behind the modelled schedule,
    #: summed over replicas (``kvgate_sim_schedule_lag_seconds``); > 0 means the machine, not
    #: the model, shaped part of the latencies. None without replica scrapes.
    replica_lag_s: float | None = None
    #: that lag as a share of the replicas' wall time during the run (0.01 = 1 %)
    replica_lag_share: float | None = None
    #: how every request ended: ok, 429, 503, timeouts, other errors (kvgate.bench.outcomes)
    outcomes: OutcomeCounts | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _throughput(records: Sequence[RequestRecord]) -> tuple[float, float, float]:
    """(output tok/s, req/s, span in s) of the successful records."""
    ok = [r for r in records if r.ok and r.e2e_s is not None]
    if not ok:
        return 0.0, 0.0, 0.0
    start = min(r.start_s for r in ok)
    end = max(r.start_s + (r.e2e_s or 0.0) for r in ok)
    span = end - start
    if span <= 0:
        return 0.0, 0.0, 0.0
    return sum(r.output_tokens for r in ok) / span, len(ok) / span, span


def summarize(
    policy: str,
    records: Sequence[RequestRecord],
    *,
    before: Mapping[str, ReplicaCounters] | None = None,
    after: Mapping[str, ReplicaCounters] | None = None,
    replica_names: Mapping[str, str] | None = None,
    rates: Mapping[int, float] | None = None,
    load: str = "",
    workload: str = "",
    time_scale: float = 1.0,
) -> Summary:
    """Aggregate one run. ``before``/``after`` are replica scrapes keyed by URL; the
    records' times are model time, ``time_scale`` × wall time (``kvgate sim --speed``)."""
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    itl = [gap for r in ok for gap in r.itl_s]
    tpot = [
        (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
        for r in ok
        if r.e2e_s is not None and r.ttft_s is not None and r.output_tokens > 1
    ]
    out_tok_s, req_s, span = _throughput(records)

    usage_ok = [r for r in ok if r.cached_tokens is not None]
    prompt_sum = sum(r.prompt_tokens for r in usage_ok)
    hit_usage = sum(r.cached_tokens or 0 for r in usage_ok) / prompt_sum if prompt_sum else None

    hit_server: float | None = None
    lag_s: float | None = None
    replica_requests: dict[str, float] = {}
    if before is not None and after is not None:
        deltas = {url: after[url] - before[url] for url in after if url in before}
        queries = sum(d.prefix_cache_queries for d in deltas.values())
        hits = sum(d.prefix_cache_hits for d in deltas.values())
        hit_server = hits / queries if queries > 0 else None
        names = replica_names or {}
        replica_requests = {names.get(u, u): d.requests_finished for u, d in deltas.items()}
        lag_s = sum(d.schedule_lag_s for d in deltas.values())
    balance = None
    if replica_requests and sum(replica_requests.values()) > 0:
        mean = sum(replica_requests.values()) / len(replica_requests)
        balance = max(replica_requests.values()) / mean

    stages = []
    for stage in sorted({r.stage for r in records}):
        rs = [r for r in records if r.stage == stage]
        st_ttft = [r.ttft_s for r in rs if r.ok and r.ttft_s is not None]
        st_tok, st_req, _ = _throughput(rs)
        oc = OutcomeCounts.of(rs)
        stages.append(
            StageSummary(
                stage,
                (rates or {}).get(stage),
                len(rs),
                sum(1 for r in rs if not r.ok),
                percentile(st_ttft, 50),
                percentile(st_ttft, 90),
                st_tok,
                st_req,
                ok=oc.ok,
                rejected_429=oc.rejected_429,
                unavailable_503=oc.unavailable_503,
                explicit_rejections=oc.explicit_rejections,
                timeouts=oc.timeouts,
                other_errors=oc.other_errors,
                rejection_p90_s=oc.rejection_p90_s,
            )
        )

    _set_generated(stages, records)
    return Summary(
        policy=policy,
        requests=len(records),
        errors=len(records) - len(ok),
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        itl_p50_s=percentile(itl, 50),
        e2e_p90_s=percentile(e2e, 90),
        output_tok_s=out_tok_s,
        hit_rate=hit_server if hit_server is not None else hit_usage,
        hit_rate_source="server"
        if hit_server is not None
        else "usage"
        if hit_usage is not None
        else None,
        hit_rate_server=hit_server,
        hit_rate_usage=hit_usage,
        ttft_mean_s=sum(ttft) / len(ttft) if ttft else None,
        itl_p90_s=percentile(itl, 90),
        itl_p99_s=percentile(itl, 99),
        tpot_p50_s=percentile(tpot, 50),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p99_s=percentile(e2e, 99),
        req_s=req_s,
        duration_s=span,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=sum(r.output_tokens for r in ok),
        errors_by_kind=dict(Counter(r.error for r in records if r.error is not None)),
        replica_requests=replica_requests,
        balance_max_over_mean=balance,
        load=load,
        workload=workload,
        stages=stages,
        replica_lag_s=lag_s,
        replica_lag_share=(
            lag_s / (len(replica_requests) * span / time_scale)
            if lag_s is not None and replica_requests and span > 0
            else None
        ),
        outcomes=OutcomeCounts.of(records),
    )


# --- output ------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}" if v >= 0.1 else f"{v * 1000:.1f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def pick_baseline(policies: Sequence[str]) -> str | None:
    """The policy the others are compared against: round-robin when it ran, else the first
    (a P/D or CPU-tier comparison's first policy is the one without the change)."""
    if "round-robin" in policies:
        return "round-robin"
    return policies[0] if policies else None


def markdown_table(summaries: Sequence[Summary], baseline: str | None = "round-robin") -> str:
    """A Markdown table, one row per summary; ratios against ``baseline`` if present."""
    head = (
        "| policy | requests | errors | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | E2E p90 ms | output tok/s | req/s | hit rate | hit rate (usage) "
        "| busiest/mean |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for s in summaries:
        bal = "–" if s.balance_max_over_mean is None else f"{s.balance_max_over_mean:.2f}"
        errs = str(s.errors)
        if s.errors_by_kind:
            errs += " (" + ", ".join(f"{k} {v}" for k, v in sorted(s.errors_by_kind.items())) + ")"
        rows.append(
            f"| {s.policy} | {s.requests} | {errs} | {_ms(s.ttft_p50_s)} | {_ms(s.ttft_p90_s)} "
            f"| {_ms(s.ttft_p99_s)} | {_ms(s.itl_p50_s)} | {_ms(s.itl_p99_s)} | {_ms(s.e2e_p90_s)} "
            f"| {s.output_tok_s:.0f} | {s.req_s:.2f} | {_pct(s.hit_rate)} "
            f"| {_pct(s.hit_rate_usage)} | {bal} |"
        )
    text = head + "\n".join(rows) + "\n"
    lag = lag_warning(summaries)
    if lag:
        text += f"\n{lag}\n"
    base = next((s for s in summaries if s.policy == baseline), None)
    if base is not None and len(summaries) > 1:
        lines = []
        for s in summaries:
            if s is base:
                continue
            lines.append(f"- {s.policy}: {comparison_line(s, base)}")
        text += f"\nAgainst {baseline}:\n" + "\n".join(lines) + "\n"
    return text


#: Share of the replicas' time spent behind their modelled schedule above which the report
#: says so (a few restarts of a few ms are normal; a percent of the run shapes percentiles).
LAG_WARN_SHARE = 0.01


def lag_warning(summaries: Sequence[Summary]) -> str | None:
    """One line naming the runs whose simulated replicas fell behind their model, or None."""
    late = [
        s
        for s in summaries
        if s.replica_lag_share is not None and s.replica_lag_share > LAG_WARN_SHARE
    ]
    if not late:
        return None
    runs = ", ".join(
        f"{s.policy} {s.replica_lag_s or 0.0:.2f} s, {100 * (s.replica_lag_share or 0.0):.1f} %"
        for s in late
    )
    return (
        f"Warning: simulated replicas fell behind their modelled schedule ({runs} of their "
        "time): part of those latencies is this machine's CPU, not the model. Give the "
        "replicas more CPU or run the simulator slower (--speed)."
    )


def comparison_line(s: Summary, base: Summary) -> str:
    parts = []
    if s.ttft_p90_s and base.ttft_p90_s:
        ratio = base.ttft_p90_s / s.ttft_p90_s
        if ratio >= 1:
            parts.append(f"TTFT p90 {ratio:.2f}× lower")
        else:
            parts.append(f"TTFT p90 {1 / ratio:.2f}× higher")
    if s.itl_p99_s and base.itl_p99_s:  # what P/D is for: decode not stalled by prefill
        ratio = base.itl_p99_s / s.itl_p99_s
        parts.append(
            f"ITL p99 {ratio:.2f}× lower" if ratio >= 1 else f"ITL p99 {1 / ratio:.2f}× higher"
        )
    if s.hit_rate is not None and base.hit_rate:
        parts.append(f"hit rate {s.hit_rate / base.hit_rate:.2f}×")
    elif s.hit_rate is not None and base.hit_rate == 0:
        parts.append("hit rate from 0")
    if base.output_tok_s:
        parts.append(f"output tok/s {s.output_tok_s / base.output_tok_s:.2f}×")
    return ", ".join(parts) or "no comparable figures"


def rich_table(summaries: Sequence[Summary]) -> Any:
    """The same table as a ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    table = Table(title="kvgate bench")
    for col in (
        "policy",
        "req",
        "err",
        "TTFT p50 ms",
        "TTFT p90 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "E2E p90 ms",
        "out tok/s",
        "req/s",
        "hit rate",
        "busiest/mean",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        table.add_row(
            s.policy,
            str(s.requests),
            str(s.errors),
            _ms(s.ttft_p50_s),
            _ms(s.ttft_p90_s),
            _ms(s.ttft_p99_s),
            _ms(s.itl_p50_s),
            _ms(s.itl_p99_s),
            _ms(s.e2e_p90_s),
            f"{s.output_tok_s:.0f}",
            f"{s.req_s:.2f}",
            _pct(s.hit_rate),
            "–" if s.balance_max_over_mean is None else f"{s.balance_max_over_mean:.2f}",
        )
    return table


def plot_ttft_cdf(runs: Mapping[str, Sequence[RequestRecord]], path: Path, title: str = "") -> None:
    samples = {
        policy: [r.ttft_s for r in records if r.ok and r.ttft_s is not None]
        for policy, records in runs.items()
    }
    _plot_cdf(
        samples, path, "time to first token", "fraction of requests", title or "TTFT CDF per policy"
    )


def plot_itl_cdf(runs: Mapping[str, Sequence[RequestRecord]], path: Path, title: str = "") -> None:
    """Every inter-token gap of the successful requests, pooled per policy (the ITL
    percentiles' population); what P/D changes."""
    samples = {
        policy: [gap for r in records if r.ok for gap in r.itl_s]
        for policy, records in runs.items()
    }
    heading = f"{title}: inter-token gaps" if title else "ITL CDF per policy"
    _plot_cdf(samples, path, "inter-token latency", "fraction of gaps", heading)


def _plot_cdf(
    samples_s: Mapping[str, Sequence[float]], path: Path, what: str, ylabel: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, values in samples_s.items():
        xs = sorted(values)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step([x * 1000 for x in xs], ys, where="post", label=policy)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = ax.get_xlim()
    ticks = [m * 10**e for e in range(-1, 7) for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{what} (ms, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.01)
    ax.axhline(0.9, color="grey", lw=0.5, ls=":")
    ax.axhline(0.99, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # every request failed: nothing to label
        ax.legend(loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_rate(summaries: Sequence[Summary], path: Path, title: str = "") -> None:
    """TTFT p90 and output tok/s against the offered request rate, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in summaries:
        pts = [(st.rate, st) for st in s.stages if st.rate is not None]
        if not pts:
            continue
        pts.sort(key=lambda p: p[0] or 0.0)
        rates = [p[0] for p in pts]
        # a stage where every request failed has no TTFT: a gap (NaN), not a drop to zero
        ttft_ms = [p[1].ttft_p90_s * 1000 if p[1].ttft_p90_s is not None else math.nan for p in pts]
        ax1.plot(rates, ttft_ms, marker="o", label=s.policy)
        ax2.plot(rates, [p[1].output_tok_s for p in pts], marker="o", label=s.policy)
    ax1.set_xlabel("offered load (req/s)")
    ax1.set_ylabel("TTFT p90 (ms, log scale)")
    ax1.set_yscale("log")
    ax2.set_xlabel("offered load (req/s)")
    ax2.set_ylabel("output tokens/s")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # runs without rate stages draw nothing here
            ax.legend()
    fig.suptitle(title or "TTFT and throughput against request rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    out_dir: Path,
    summaries: Sequence[Summary],
    runs: Mapping[str, Sequence[RequestRecord]],
    *,
    meta: Mapping[str, Any] | None = None,
    baseline: str | None = "round-robin",
    title: str = "",
    sections: Sequence[str] = (),
) -> list[Path]:
    """Write results.json, report.md, requests/<policy>.jsonl and the PNG plots;
    ``sections`` (Markdown) follow the main table in report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    results = out_dir / "results.json"
    results.write_text(json.dumps([s.to_json() for s in summaries], indent=2) + "\n")
    written.append(results)
    if meta is not None:
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        written.append(out_dir / "meta.json")
    req_dir = out_dir / "requests"
    req_dir.mkdir(exist_ok=True)
    for policy, records in runs.items():
        p = req_dir / f"{_safe(policy)}.jsonl"
        p.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
        written.append(p)
    cdf = out_dir / "ttft_cdf.png"
    plot_ttft_cdf(runs, cdf, title)
    itl_cdf = out_dir / "itl_cdf.png"
    plot_itl_cdf(runs, itl_cdf, title)
    vs_rate = out_dir / "ttft_throughput_vs_rate.png"
    plot_vs_rate(summaries, vs_rate, title)
    written += [cdf, itl_cdf, vs_rate]
    md = out_dir / "report.md"
    lines = [f"# {title or 'kvgate bench'}\n"]
    if meta:
        for key in ("command", "workload", "load", "machine", "started"):
            if key in meta:
                lines.append(f"- {key}: `{meta[key]}`")
        lines.append("")
    lines.append(markdown_table(summaries, baseline))
    from kvgate.bench.ladder import ladder_markdown

    ladder = ladder_markdown(summaries)
    if ladder:
        lines.append(ladder)
    lines.extend(sections)
    lines.append(
        "\n![TTFT CDF](ttft_cdf.png)\n\n![ITL CDF](itl_cdf.png)\n\n"
        "![TTFT and throughput vs rate](ttft_throughput_vs_rate.png)\n"
    )
    md.write_text("\n".join(lines))
    written.append(md)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _set_generated(stages: list[StageSummary], records: Sequence[RequestRecord]) -> None:
    """Fill each stage's ``generated_tok_s``: its window runs from its first request's start to
    the next stage's (the last stage: as long as the one before it, or to its last request's
    start if that is later)."""
    if len(stages) < 2:
        return
    starts = {st.stage: min(r.start_s for r in records if r.stage == st.stage) for st in stages}
    order = [st.stage for st in stages]
    windows: list[tuple[float, float]] = []
    for i, stage in enumerate(order):
        begin = starts[stage]
        if i + 1 < len(order):
            end = starts[order[i + 1]]
        else:
            previous = windows[-1][1] - windows[-1][0]
            end = max(max(r.start_s for r in records if r.stage == stage), begin + previous)
        windows.append((begin, end))
    generated = [0.0] * len(order)
    for r in records:
        if not r.ok or r.ttft_s is None or r.e2e_s is None or not r.output_tokens:
            continue
        first, last = r.start_s + r.ttft_s, r.start_s + r.e2e_s
        span = max(last - first, 1e-9)
        for i, (begin, end) in enumerate(windows):
            overlap = min(end, last) - max(begin, first)
            if overlap > 0:
                generated[i] += r.output_tokens * overlap / span
    for st, (begin, end), tokens in zip(stages, windows, generated, strict=True):
        st.generated_tok_s = tokens / (end - begin) if end > begin else 0.0
