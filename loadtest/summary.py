"""The tables printed when a run ends: per phase, the rates, every measure's percentiles,
the outcomes one by one (never averaged) and the server's own latency breakdown."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from loadtest.result import Phase, Result


def _phases(result: Result) -> list[Phase]:
    return [*result.phases, result.totals]


def print_summary(result: Result, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 120  # a log file: wide enough for the tables
    title = f"{result.scenario} → {result.target}, {result.mode} loop, {result.duration_s:.1f} s"
    if result.interrupted:
        title += " (interrupted)"
    rates = Table(title=title, title_justify="left")
    for column in ("phase", "offered/s", "achieved/s", "sent", "completed", "dropped"):
        rates.add_column(column, justify="left" if column == "phase" else "right")
    for phase in _phases(result):
        rates.add_row(
            phase.name,
            f"{phase.offered_rate:.1f}",
            f"{phase.achieved_rate:.1f}",
            str(phase.sent),
            str(phase.completed),
            str(phase.dropped),
            style="bold" if phase is result.totals else None,
        )
    console.print(rates)
    for kind in ("latency", "breakdown"):
        table = Table(
            title="latency, ms" if kind == "latency" else "the server's latency_breakdown, ms",
            title_justify="left",
        )
        for column in ("phase", "measure", "count", "mean", "p50", "p90", "p99", "p99.9", "max"):
            table.add_column(column, justify="left" if column in ("phase", "measure") else "right")
        for phase in _phases(result):
            for measure, p in getattr(phase, kind).items():
                table.add_row(
                    phase.name, measure, str(p.count), f"{p.mean:.1f}", f"{p.p50:.1f}",
                    f"{p.p90:.1f}", f"{p.p99:.1f}", f"{p.p999:.1f}", f"{p.max:.1f}",
                )  # fmt: skip
        if table.row_count:
            console.print(table)
    outcomes = Table(title="outcomes", title_justify="left")
    outcomes.add_column("phase")
    outcomes.add_column("outcome")
    outcomes.add_column("count", justify="right")
    for phase in _phases(result):
        for name, count in phase.outcomes.items():
            outcomes.add_row(phase.name, name, str(count))
    console.print(outcomes)
    if result.site is not None:
        print_site(result, console)


def print_site(result: Result, console: Console) -> None:
    """A site-like run's own figures: what its page views cost in the deployment's slots."""
    site = result.site
    assert site is not None
    table = Table(title=f"a site's page views, start on {site.start}", title_justify="left")
    figures = {
        "page views": str(site.page_views),
        "mints": str(site.mints),
        "sessions held, peak": str(site.peak_held),
        "sessions held, mean": "-" if site.mean_held is None else f"{site.mean_held:.1f}",
        "waiting room, peak": str(site.peak_waiting),
        "slot-seconds held": str(site.slot_seconds),
        "chatting visitors": str(site.chatting),
        "of them waited": str(site.waited),
        "their wait p50, ms": "-" if site.wait_p50_ms is None else f"{site.wait_p50_ms:.1f}",
        "their wait p95, ms": "-" if site.wait_p95_ms is None else f"{site.wait_p95_ms:.1f}",
        "of them refused": str(site.refused),
        "samples": str(len(site.samples)),
    }
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, value)
    console.print(table)
