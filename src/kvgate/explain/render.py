"""Render ``/debug/explain`` reports with rich: one row per endpoint, one column per scorer."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _prefix(view: dict[str, Any] | None) -> str:
    if not view:
        return "–"
    text = f"{view['tokens']} tok"
    if view.get("blocks") is not None and view.get("total_blocks"):
        text += f" {view['blocks']}/{view['total_blocks']}"
    return text


def report_table(report: dict[str, Any]) -> Table:
    """The per-endpoint table of one dry-run report."""
    scorers = report.get("scorers", [])
    table = Table(show_lines=False, header_style="bold")
    table.add_column("")
    table.add_column("endpoint", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("total", justify="right")
    for s in scorers:
        table.add_column(f"{s['name']}\n×{s['weight']:g}", justify="right")
    table.add_column("approx prefix", justify="right")
    table.add_column("precise prefix", justify="right")
    table.add_column("queue", justify="right")
    table.add_column("running", justify="right")
    table.add_column("KV", justify="right")
    rows = sorted(report.get("endpoints", []), key=lambda r: -(r["total"] or -1.0))
    for row in rows:
        if row["survived_filters"]:
            state = "candidate"
        elif row["candidate"]:
            state = "[yellow]filtered out[/]"
        else:
            state = "[red]not in rotation[/]"
        picked = row["picked"]
        cells = ["★" if picked else "", row["name"], state, _num(row["total"])]
        cells += [_num(row["scores"].get(s["name"])) for s in scorers]
        prefix = row.get("prefix", {})
        cells += [_prefix(prefix.get("approximate")), _prefix(prefix.get("precise"))]
        cells += [str(row["waiting"]), str(row["running"]), f"{row['kv_cache_usage'] * 100:.0f}%"]
        table.add_row(*cells, style="bold green" if picked else None)
    return table


def logged_table(logged: dict[str, Any]) -> Table:
    """The scores a served request was routed with (from the dashboard's ring)."""
    scores: dict[str, dict[str, float]] = logged.get("scores") or {}
    names = sorted({k for entry in scores.values() for k in entry if k != "total"})
    table = Table(header_style="bold")
    table.add_column("")
    table.add_column("endpoint")
    table.add_column("total", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for endpoint, entry in sorted(scores.items(), key=lambda kv: -kv[1]["total"]):
        won = endpoint == logged.get("winner")
        cells = ["★" if won else "", endpoint, _num(entry["total"])]
        cells += [_num(entry.get(n)) for n in names]
        table.add_row(*cells, style="bold green" if won else None)
    return table


def _summary(report: dict[str, Any]) -> str:
    head = (
        f"request {report['request_id']} · model {report['model']} ({report['kind']}) · "
        f"profile {report['profile']} · {report['picker']}"
    )
    if report.get("pick"):
        return head + f"\npick: [bold green]{report['pick']}[/]"
    return head + f"\n[red]no pick[/]: {report.get('error')}"


def render(report: dict[str, Any], console: Console | None = None) -> None:
    """Print a report (a dry run, or ``{"logged": ..., "now": ...}`` for a request id)."""
    # a pipe or a log gets whole lines; a terminal gets its own width
    out = console or Console(width=None if sys.stdout.isatty() else 200)
    if "logged" in report:
        logged = report["logged"]
        when = dt.datetime.fromtimestamp(logged["time"]).strftime("%H:%M:%S")
        out.print(
            f"[bold]logged[/] at {when}: status {logged['status']}, served by "
            f"{logged['endpoint'] or '–'} (winner {logged['winner'] or '–'}), "
            f"queue {_num(logged['queue_wait_ms'], 1)} ms, {_num(logged['duration_ms'], 1)} ms"
        )
        if logged.get("scores"):
            out.print(logged_table(logged))
        else:
            out.print(f"not scheduled: {logged.get('error')}")
        out.print("[bold]now[/] (the same request scored again, without routing it):")
        report = report["now"]
    out.print(_summary(report))
    out.print(report_table(report))
