"""Per-tenant figures of a multi-tenant run, and what they mean for flow control.

One row per (run, tenant): TTFT p50/p90/p99 of the tenant's successful requests, its
throughput (requests/s and output tokens/s over its own span) and every request by outcome
(:mod:`kvgate.bench.outcomes`: ok, 429, 503, timeouts, other errors; they add up to
``requests``). Below the table, per policy: the interactive tenant's TTFT p90 loaded against
unloaded (the same policy's ``--unloaded`` run of the interactive tenant alone), and the
batch tenant's output against the pool's estimated capacity (:mod:`kvgate.bench.capacity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvgate.bench.capacity import CapacityEstimate
from kvgate.bench.report import Summary, summarize
from kvgate.bench.runner import RequestRecord

#: Label suffix of a policy's unloaded reference run.
UNLOADED_SUFFIX = " (unloaded)"


@dataclass(frozen=True, slots=True)
class TenantRow:
    run: str  # the run's label: a policy, or "<policy> (unloaded)"
    tenant: str
    summary: Summary  # of this tenant's records only


def tenant_rows(
    run: str, records: Sequence[RequestRecord], time_scale: float = 1.0
) -> list[TenantRow]:
    """One row per tenant of ``records``: interactive, batch, then any other by name."""
    tenants: dict[str, list[RequestRecord]] = {}
    for r in sorted(records, key=lambda r: r.start_s):
        tenants.setdefault(r.tenant, []).append(r)
    order = sorted(tenants, key=lambda t: (t != "interactive", t != "batch", t))
    return [
        TenantRow(run, t, summarize(f"{run} / {t}", tenants[t], time_scale=time_scale))
        for t in order
    ]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def _row(row: TenantRow) -> str:
    s = row.summary
    o = s.outcomes
    assert o is not None  # summarize always counts outcomes
    return (
        f"| {row.run} | {row.tenant or '–'} | {s.requests} | {_ms(s.ttft_p50_s)} "
        f"| {_ms(s.ttft_p90_s)} | {_ms(s.ttft_p99_s)} | {s.req_s:.2f} | {s.output_tok_s:.0f} "
        f"| {o.ok} | {o.rejected_429} | {o.unavailable_503} | {o.timeouts} | {o.other_errors} |"
    )


def ratio_lines(
    rows: Sequence[TenantRow], capacity: CapacityEstimate | None, batch_rate_rps: float | None
) -> list[str]:
    """Per policy: interactive TTFT p90 loaded vs unloaded; batch output vs capacity."""
    by_key = {(r.run, r.tenant): r.summary for r in rows}
    lines = []
    policies = [r.run for r in rows if not r.run.endswith(UNLOADED_SUFFIX)]
    for policy in dict.fromkeys(policies):
        loaded = by_key.get((policy, "interactive"))
        unloaded = by_key.get((policy + UNLOADED_SUFFIX, "interactive"))
        parts = []
        if loaded is not None:
            text = f"interactive TTFT p90 {_ms(loaded.ttft_p90_s)} ms loaded"
            if unloaded is not None:
                text += f" vs {_ms(unloaded.ttft_p90_s)} ms unloaded"
                if loaded.ttft_p90_s and unloaded.ttft_p90_s:
                    text += f" ({loaded.ttft_p90_s / unloaded.ttft_p90_s:.2f}×)"
            parts.append(text)
        batch = by_key.get((policy, "batch"))
        if batch is not None:
            text = f"batch {batch.req_s:.2f} req/s, {batch.output_tok_s:.0f} output tok/s"
            if capacity is not None and capacity.requests_per_s > 0:
                text += (
                    f" = {100 * batch.req_s / capacity.requests_per_s:.0f} % of the pool's "
                    f"estimated capacity ({capacity.requests_per_s:.2f} req/s)"
                )
            if batch_rate_rps:
                text += f", offered {batch_rate_rps:.2f} req/s"
            parts.append(text)
        if parts:
            lines.append(f"- {policy}: " + "; ".join(parts))
    return lines


def tenant_markdown(
    rows: Sequence[TenantRow],
    *,
    capacity: CapacityEstimate | None = None,
    batch_rate_rps: float | None = None,
    notes: Mapping[str, str] | None = None,
) -> str:
    """The per-tenant section of report.md."""
    text = (
        "\n## Per tenant\n\n"
        "TTFT of successful requests; throughput over the tenant's own span; every request "
        "in one outcome column (ok + 429 + 503 + timeouts + other = requests).\n\n"
        "| run | tenant | requests | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | req/s "
        "| output tok/s | ok | 429 | 503 | timeouts | other errors |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    text += "\n".join(_row(r) for r in rows) + "\n"
    lines = ratio_lines(rows, capacity, batch_rate_rps)
    if lines:
        text += "\n" + "\n".join(lines) + "\n"
    for key, note in (notes or {}).items():
        text += f"\n{key}: {note}\n"
    return text
