"""``report.html``: one self-contained page that shows what a load test found.

:func:`render` turns a :class:`~loadtest.result.Result` into a whole HTML document:

* a header with the tool, target, scenario, loop mode, start, duration, stages and the
  command line, and a warning banner when the run was stopped early;
* charts: latency over time (p50 and p99 per second, stage boundaries marked), throughput
  over time (started, completed and errors per second, plus the offered rate in open
  loop), one latency histogram per measure (log-scaled x, p50 and p99 marked) and the
  server's RSS and CPU over time when its ``/metrics`` was sampled;
* tables: offered versus achieved rate with what the generator dropped, percentiles per
  phase and measure, every outcome counted on its own row (429, 503 and 504 apart, never
  averaged), and Rapport's own ``latency_breakdown``.

The charts are SVG written here by hand rather than a chart library: a report must open
from a file, offline, years later, so nothing may come from a CDN, and a vendored library
with its licence would outweigh the few hundred lines that axes, polylines, bars and a
legend take. There is no script: the page is static, prints well and reads on a phone.
Every string taken from the result is escaped, and the output depends on nothing but the
result, so the same result always renders to the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise

from loadtest.result import Percentiles, Phase, Result, ServerSample, SiteFigures, Stage

__all__ = ["render", "render_sites"]

MEASURES = (
    "request", "chat_wait", "mint", "queue_wait", "connect", "first_delta", "reply",
    "cancel_to_done",
)  # fmt: skip
"""The order measures are shown in; any other measure follows in the order first seen."""

MIB = 1024 * 1024
DASH = "\u2013"

# Chart geometry, in SVG user units (the SVG scales to the page's width).
LEFT, RIGHT, TOP, BOTTOM = 62, 18, 30, 42
WIDE = (760, 280)
SMALL = (480, 250)

Point = tuple[float, float | None]

_CSS = """
:root{color-scheme:light;--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--bad:#b42318;
--badbg:#fdf0ee;--warn:#9a5b00;--warnbg:#fff5e0}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:#fff}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.5rem;margin:.2em 0 .5em}
h2{font-size:1.2rem;margin:1.8em 0 .5em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
p{margin:.4em 0}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0 0 12px}
.meta dt{color:var(--muted)}
.meta dd{margin:0;overflow-wrap:anywhere}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:8px 12px;
margin:0;white-space:pre-wrap;overflow-wrap:anywhere;font-size:13px}
.banner{background:var(--warnbg);color:var(--warn);border:1px solid #f0b429;
border-left:6px solid #d97706;border-radius:6px;padding:8px 12px;font-weight:600}
.glance{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:12px 0}
.glance li{border:1px solid var(--line);border-radius:6px;padding:6px 10px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:8px 0 16px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:14px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);white-space:nowrap;text-align:left}
th{font-weight:600;background:#f6f8fa}
tbody+tbody{border-top:2px solid var(--line)}
.n{text-align:right}
tr.total td{font-weight:600}
tr.bad{background:var(--badbg)}
tr.bad td:first-child,.bad{color:var(--bad);font-weight:600}
.empty,.note{color:var(--muted)}
figure{margin:8px 0 20px}
figcaption{font-weight:600;margin-bottom:4px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:0 24px}
.chart{overflow-x:auto;-webkit-overflow-scrolling:touch}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;fill:#59636e}
svg .grid{stroke:#eaeef2}
svg .axis{stroke:#8c959f}
svg .stage{stroke:#8c959f;stroke-dasharray:3 3}
svg .series{fill:none;stroke-width:1.8;stroke-linejoin:round}
svg .dash{stroke-dasharray:6 4}
svg .dot{fill:currentColor}
svg .bar{fill:#6e9fe8}
svg .marker{stroke-width:1.4;stroke-dasharray:4 3}
svg .c0{stroke:#2563eb;color:#2563eb}
svg .c1{stroke:#c2410c;color:#c2410c}
svg .c2{stroke:#15803d;color:#15803d}
svg .c3{stroke:#6b7280;color:#6b7280}
svg .c4{stroke:#7c3aed;color:#7c3aed}
svg .c5{stroke:#1f2328;color:#1f2328}
svg .cbad{stroke:#b42318;color:#b42318}
@media (max-width:600px){body{font-size:14px}main{padding:10px}
.meta{grid-template-columns:1fr}.meta dd{margin-bottom:4px}svg.wide{min-width:560px}}
@media print{body{font-size:10pt}main{max-width:none;padding:0}
.scroll,.chart{overflow:visible}svg.wide{min-width:0}figure,table,.glance{break-inside:avoid}h2{break-after:avoid}
.banner,tr.bad,th{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def render(result: Result) -> str:
    """The whole ``report.html`` for one run, as a string."""
    parts = [
        _head(result),
        "<body>\n<main>",
        _header(result),
        _site(result),
        _section("Latency over time", _latency_over_time(result)),
        _section("Throughput", _throughput(result) + _rates_table(result)),
        _section("Outcomes", _outcomes(result)),
        _section("Latency", _latency(result)),
        _section("Rapport's latency breakdown", _breakdown(result)),
        _section("Server", _server(result)),
        "</main>\n</body>\n</html>\n",
    ]
    return "\n".join(parts)


# Formatting -------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _ms(value: float) -> str:
    """Milliseconds: two decimals below 100 ms, one above."""
    if not math.isfinite(value):
        return DASH
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"


def _count(value: int) -> str:
    return f"{value:,}"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if math.isfinite(value) else DASH


def _num(value: float) -> str:
    """A tick label or a setting: as few decimals as it needs."""
    if not math.isfinite(value):
        return DASH
    text = f"{value:,.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _f(value: float) -> str:
    """An SVG coordinate."""
    return f"{value:.1f}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else DASH


# Page structure ---------------------------------------------------------------------------


def _head(result: Result) -> str:
    title = f"{result.tool}: {result.scenario} against {result.target}"
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>"
    )


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{body}\n</section>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _figure(caption: str, body: str) -> str:
    return (
        f'<figure>\n<figcaption>{_e(caption)}</figcaption>\n<div class="chart">{body}</div>\n'
        "</figure>"
    )


_MODES = {
    "open": "open loop: arrivals on a schedule, whatever the server's pace",
    "closed": "closed loop: a fixed number of clients, each waiting for its reply",
}


def _stages(stages: Sequence[Stage], mode: str) -> str:
    if not stages:
        return DASH
    unit = "/s" if mode == "open" else " clients"
    return ", then ".join(f"{_num(s.duration_s)} s to {_num(s.target)}{unit}" for s in stages)


def _header(result: Result) -> str:
    banner = ""
    if result.interrupted:
        banner = '<p class="banner" role="alert">Stopped early: figures cover what ran.</p>\n'
    meta = [
        ("Tool", result.tool),
        ("Target", result.target),
        ("Scenario", result.scenario),
        ("Mode", _MODES.get(result.mode, result.mode)),
        ("Started", result.started_at),
        ("Duration", f"{_num(round(result.duration_s, 1))} s"),
        ("Stages", _stages(result.stages, result.mode)),
    ]
    rows = "\n".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta)
    return (
        f"<header>\n<h1>Load test: {_e(result.scenario)}</h1>\n{banner}"
        f'<dl class="meta">\n{rows}\n</dl>\n'
        f"<pre><code>{_e(result.command)}</code></pre>\n</header>\n{_glance(result)}"
    )


def _glance(result: Result) -> str:
    t = result.totals
    failed = sum(n for outcome, n in t.outcomes.items() if not _is_success(outcome))
    items = [
        f"<strong>{_rate(t.achieved_rate)}/s</strong> achieved of {_rate(t.offered_rate)}/s "
        "offered",
        f"<strong>{_count(t.sent)}</strong> sent, {_count(t.completed)} completed",
        f"{_flag(t.dropped)} dropped by the generator",
        f"{_flag(failed)} not successful ({_share(failed, sum(t.outcomes.values()))})",
    ]
    measures = _ordered(t.latency, MEASURES)
    if measures:
        p = t.latency[measures[0]]
        items.append(f"<strong>{_ms(p.p99)} ms</strong> p99 {_e(measures[0])}")
    return '<ul class="glance">\n' + "\n".join(f"<li>{i}</li>" for i in items) + "\n</ul>"


def _flag(count: int) -> str:
    cls = ' class="bad"' if count else ""
    return f"<strong{cls}>{_count(count)}</strong>"


# Tables -----------------------------------------------------------------------------------

Row = tuple[str, Sequence[str]]
"""A row's class (or "") and its cells, already HTML."""


def _table(head: Sequence[str], groups: Iterable[Sequence[Row]], numeric_from: int) -> str:
    """A table in a horizontally scrolling box; each group is its own ``<tbody>``."""

    def cell(tag: str, i: int, content: str) -> str:
        cls = ' class="n"' if i >= numeric_from else ""
        return f"<{tag}{cls}>{content}</{tag}>"

    out = ['<div class="scroll">\n<table>', "<thead><tr>"]
    out.append("".join(cell("th", i, _e(h)) for i, h in enumerate(head)) + "</tr></thead>")
    for group in groups:
        out.append("<tbody>")
        for cls, cells in group:
            attr = f' class="{cls}"' if cls else ""
            tds = "".join(cell("td", i, c) for i, c in enumerate(cells))
            out.append(f"<tr{attr}>{tds}</tr>")
        out.append("</tbody>")
    out.append("</table>\n</div>")
    return "\n".join(out)


def _phases_and_total(result: Result) -> list[tuple[str, Phase, bool]]:
    rows = [(p.name, p, False) for p in result.phases]
    return [*rows, ("whole run", result.totals, True)]


def _ordered(keys: Iterable[str], known: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(keys))
    return [k for k in known if k in seen] + [k for k in seen if k not in known]


def _rates_table(result: Result) -> str:
    head = ["phase", "window", "offered /s", "achieved /s", "sent", "completed", "dropped"]
    rows: list[Row] = []
    for name, p, total in _phases_and_total(result):
        cells = [
            _e(name),
            f"{_num(round(p.started_s, 1))}{DASH}{_num(round(p.ended_s, 1))} s",
            _rate(p.offered_rate),
            _rate(p.achieved_rate),
            _count(p.sent),
            _count(p.completed),
            f'<span class="bad">{_count(p.dropped)}</span>' if p.dropped else "0",
        ]
        rows.append(("total" if total else "", cells))
    note = (
        '<p class="note">Offered is what the schedule asked for; achieved counts completed '
        "operations, errors included; dropped are arrivals the generator could not start "
        "on time.</p>"
    )
    return note + "\n" + _table(head, [rows], numeric_from=1)


def _is_success(outcome: str) -> bool:
    head = outcome.split(" ", 1)[0]
    if head.isascii() and head.isdigit():
        return 200 <= int(head) < 300
    return outcome.lower() in {"ok", "close 1000"}


def _outcome_key(outcome: str) -> tuple[int, int, str]:
    head = outcome.split(" ", 1)[0]
    if head.isascii() and head.isdigit():
        return (0, int(head), outcome)
    return (1, 0, outcome)


def _outcomes(result: Result) -> str:
    src = _phases_and_total(result)
    labels = sorted({k for _, p, _ in src for k in p.outcomes}, key=_outcome_key)
    if not labels:
        return _empty("No outcomes were recorded.")
    whole = sum(result.totals.outcomes.values())
    rows: list[Row] = []
    for label in labels:
        counts = [_count(p.outcomes.get(label, 0)) for _, p, _ in src]
        share = _share(result.totals.outcomes.get(label, 0), whole)
        rows.append(("" if _is_success(label) else "bad", [_e(label), *counts, share]))
    sums = [_count(sum(p.outcomes.values())) for _, p, _ in src]
    rows.append(("total", ["all outcomes", *sums, _share(whole, whole)]))
    head = ["outcome", *(name for name, _, _ in src), "share of run"]
    note = (
        '<p class="note">Every outcome is counted on its own row (429, 503 and 504 apart); '
        "rows other than success are highlighted. Nothing here is averaged.</p>"
    )
    return note + "\n" + _table(head, [rows], numeric_from=1)


def _pct_cells(p: Percentiles) -> list[str]:
    if p.count == 0:
        return ["0", *[DASH] * 5]
    return [_count(p.count), _ms(p.p50), _ms(p.p90), _ms(p.p99), _ms(p.p999), _ms(p.max)]


def _percentile_table(
    result: Result, pick: Callable[[Phase], dict[str, Percentiles]], key_head: str
) -> str:
    src = _phases_and_total(result)
    keys = _ordered((k for _, p, _ in src for k in pick(p)), MEASURES)
    groups: list[list[Row]] = []
    for key in keys:
        rows: list[Row] = []
        for name, phase, total in src:
            p = pick(phase).get(key)
            if p is not None:
                rows.append(("total" if total else "", [_e(key), _e(name), *_pct_cells(p)]))
        groups.append(rows)
    head = [key_head, "phase", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]
    return _table(head, groups, numeric_from=2)


def _latency(result: Result) -> str:
    if not any(p.latency for _, p, _ in _phases_and_total(result)):
        table = _empty("No latencies were recorded.")
    else:
        table = _percentile_table(result, lambda p: p.latency, "measure")
    return table + "\n" + _histograms(result)


def _breakdown(result: Result) -> str:
    if not any(p.breakdown for _, p, _ in _phases_and_total(result)):
        return _empty("The server reported no latency_breakdown for this scenario.")
    note = (
        '<p class="note">The fields of Rapport\'s own <code>latency_breakdown</code>, '
        "as the server reported them.</p>"
    )
    return note + "\n" + _percentile_table(result, lambda p: p.breakdown, "field")


# SVG charts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """Maps data to SVG coordinates: x from ``x_lo`` to ``x_hi`` (log10 when ``log_x``),
    y from 0 to ``y_hi``."""

    x_lo: float
    x_hi: float
    y_hi: float
    size: tuple[int, int] = WIDE
    log_x: bool = False

    @property
    def right(self) -> float:
        return self.size[0] - RIGHT

    @property
    def bottom(self) -> float:
        return self.size[1] - BOTTOM

    def x(self, value: float) -> float:
        lo, hi, v = self.x_lo, self.x_hi, min(max(value, self.x_lo), self.x_hi)
        if self.log_x:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
        return LEFT + (v - lo) / ((hi - lo) or 1.0) * (self.right - LEFT)

    def y(self, value: float) -> float:
        v = min(max(value, 0.0), self.y_hi)
        return self.bottom - v / (self.y_hi or 1.0) * (self.bottom - TOP)


@dataclass(frozen=True)
class _Series:
    label: str
    colour: str
    points: Sequence[Point]
    dashed: bool = False


def _step(hi: float, n: int = 5) -> float:
    raw = (hi if hi > 0 and math.isfinite(hi) else 1.0) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _ticks_covering(hi: float) -> list[float]:
    """Ticks from 0 whose last is at or above ``hi``: a y axis."""
    step = _step(hi)
    return [i * step for i in range(max(1, math.ceil(hi / step - 1e-9)) + 1)]


def _ticks_within(hi: float) -> list[float]:
    """Ticks from 0 up to ``hi``: an x axis that ends where the data does."""
    step = _step(hi)
    return [i * step for i in range(int(hi / step + 1e-9) + 1)]


def _svg(label: str, body: Iterable[str], size: tuple[int, int]) -> str:
    w, h = size
    return (
        f'<svg class="{"wide" if size == WIDE else "small"}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>\n" + "\n".join(b for b in body if b) + "\n</svg>"
    )


def _axes(
    frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str
) -> str:
    out = []
    for v in y_ticks:
        y = _f(frame.y(v))
        out.append(f'<line class="grid" x1="{LEFT}" x2="{_f(frame.right)}" y1="{y}" y2="{y}"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{_f(frame.y(v) + 4)}" text-anchor="end">{_num(v)}</text>'
        )
    b = frame.bottom
    for v in x_ticks:
        x = _f(frame.x(v))
        out.append(f'<line class="axis" x1="{x}" x2="{x}" y1="{_f(b)}" y2="{_f(b + 4)}"/>')
        out.append(f'<text x="{x}" y="{_f(b + 16)}" text-anchor="middle">{_num(v)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{_f(b)}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{_f(frame.right)}" y1="{_f(b)}" y2="{_f(b)}"/>')
    mid_x, mid_y = _f((LEFT + frame.right) / 2), _f((TOP + b) / 2)
    out.append(
        f'<text x="{mid_x}" y="{frame.size[1] - 6}" text-anchor="middle">{_e(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(14 {mid_y}) rotate(-90)" text-anchor="middle">'
        f"{_e(y_label)}</text>"
    )
    return "\n".join(out)


def _segments(points: Iterable[Point]) -> list[list[tuple[float, float]]]:
    """Runs of points with a value; a missing value breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y) or not math.isfinite(x):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]


def _polyline(frame: _Frame, series: _Series) -> str:
    cls = f"series {series.colour}" + (" dash" if series.dashed else "")
    out = []
    for run in _segments(series.points):
        if len(run) == 1:
            x, y = run[0]
            out.append(
                f'<circle class="dot {series.colour}" cx="{_f(frame.x(x))}" '
                f'cy="{_f(frame.y(y))}" r="2.5"/>'
            )
            continue
        pts = " ".join(f"{_f(frame.x(x))},{_f(frame.y(y))}" for x, y in run)
        out.append(f'<polyline class="{cls}" points="{pts}"/>')
    return "\n".join(out)


def _legend(series: Sequence[_Series]) -> str:
    out, x = [], float(LEFT)
    for s in series:
        cls = f"series {s.colour}" + (" dash" if s.dashed else "")
        out.append(f'<line class="{cls}" x1="{_f(x)}" x2="{_f(x + 18)}" y1="12" y2="12"/>')
        out.append(f'<text x="{_f(x + 22)}" y="16">{_e(s.label)}</text>')
        x += 22 + 6.2 * len(s.label) + 16
    return "\n".join(out)


def _stage_marks(frame: _Frame, marks: Sequence[tuple[float, str]]) -> str:
    out = []
    for at, name in marks:
        x = frame.x(at)
        if at > frame.x_lo:
            out.append(
                f'<line class="stage" x1="{_f(x)}" x2="{_f(x)}" y1="{TOP}" '
                f'y2="{_f(frame.bottom)}"/>'
            )
        out.append(f'<text x="{_f(x + 4)}" y="{TOP + 11}">{_e(name)}</text>')
    return "\n".join(out)


def _line_chart(
    label: str,
    series: Sequence[_Series],
    x_hi: float,
    y_label: str,
    marks: Sequence[tuple[float, str]] = (),
    size: tuple[int, int] = WIDE,
) -> str:
    """A time chart: seconds on x, one polyline per series, a legend above."""
    values = [y for s in series for _, y in s.points if _finite(y)]
    if not values:
        return _empty(f"No data for {label.lower()}.")
    y_ticks = _ticks_covering(max(values) * 1.04)
    frame = _Frame(x_lo=0.0, x_hi=x_hi, y_hi=y_ticks[-1], size=size)
    body = [
        _axes(frame, _ticks_within(x_hi), y_ticks, "seconds since start", y_label),
        _stage_marks(frame, marks),
        *(_polyline(frame, s) for s in series),
        _legend(series),
    ]
    return _svg(label, body, frame.size)


def _x_extent(result: Result) -> float:
    ends = [result.duration_s, *(t.t_s for t in result.timeline)]
    ends += [s.t_s for s in result.server] + [p.ended_s for p in result.phases]
    hi = max((e for e in ends if math.isfinite(e)), default=0.0)
    return hi if hi > 0 else 1.0


def _marks(result: Result) -> list[tuple[float, str]]:
    return [(p.started_s, p.name) for p in result.phases if math.isfinite(p.started_s)]


def _latency_over_time(result: Result) -> str:
    ticks = sorted(result.timeline, key=lambda t: t.t_s)
    series = [
        _Series("p50", "c0", [(t.t_s, t.p50_ms) for t in ticks]),
        _Series("p99", "c1", [(t.t_s, t.p99_ms) for t in ticks]),
    ]
    chart = _line_chart(
        "Latency over time", series, _x_extent(result), "latency, ms", _marks(result)
    )
    return _figure("p50 and p99 latency, per second; dashed lines mark stages", chart)


def _offered_steps(phases: Sequence[Phase]) -> list[Point]:
    points: list[Point] = []
    for p in phases:
        points += [(p.started_s, p.offered_rate), (p.ended_s, p.offered_rate), (p.ended_s, None)]
    return points


def _throughput(result: Result) -> str:
    ticks = sorted(result.timeline, key=lambda t: t.t_s)
    series = [
        _Series("started", "c0", [(t.t_s, float(t.started)) for t in ticks]),
        _Series("completed", "c2", [(t.t_s, float(t.completed)) for t in ticks]),
        _Series("errors", "cbad", [(t.t_s, float(t.errors)) for t in ticks]),
    ]
    if result.mode == "open" and ticks:
        series.append(_Series("offered (phase mean)", "c3", _offered_steps(result.phases), True))
    chart = _line_chart("Throughput", series, _x_extent(result), "per second", _marks(result))
    return _figure("Operations started, completed and failed, per second", chart)


# Histograms -------------------------------------------------------------------------------


def _bars(buckets: Sequence[tuple[float, int]]) -> list[tuple[float, float, int]]:
    """(lower, upper, count) bars over positive upper bounds. A bucket's lower edge is the
    previous upper bound, or one typical bucket ratio below its own where buckets were
    left out; counts at or below zero go to the first bucket."""
    counts: dict[float, int] = {}
    uppers = sorted({u for u, _ in buckets if math.isfinite(u) and u > 0})
    if not uppers:
        return []
    for upper, n in buckets:
        if math.isfinite(upper):
            key = upper if upper > 0 else uppers[0]
            counts[key] = counts.get(key, 0) + max(n, 0)
    ratios = sorted(b / a for a, b in pairwise(uppers))
    ratio = ratios[len(ratios) // 2] if ratios else 2.0
    bars, prev = [], 0.0
    for upper in uppers:
        lower = max(prev, upper / ratio)
        bars.append((lower, upper, counts.get(upper, 0)))
        prev = upper
    return bars


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 times powers of ten (only powers when the range spans over two decades),
    from the last at or below ``lo`` to the first at or above ``hi``."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1.0,) if b - a > 2 else (1.0, 2.0, 5.0)
    grid = [m * 10.0**e for e in range(a - 1, b + 1) for m in mults]
    below = max(g for g in grid if g <= lo * (1 + 1e-9))
    above = min(g for g in grid if g >= hi * (1 - 1e-9))
    return [g for g in grid if below <= g <= above]


def _markers(frame: _Frame, pct: Percentiles | None) -> str:
    if pct is None or pct.count == 0:
        return ""
    out = []
    for i, (name, value, colour) in enumerate((("p50", pct.p50, "c2"), ("p99", pct.p99, "c1"))):
        if not math.isfinite(value):
            continue
        x = frame.x(value)
        out.append(
            f'<line class="marker {colour}" x1="{_f(x)}" x2="{_f(x)}" y1="{TOP - 6}" '
            f'y2="{_f(frame.bottom)}"/>'
        )
        anchor, dx = ("end", -4) if x > frame.right - 110 else ("start", 4)
        out.append(
            f'<text x="{_f(x + dx)}" y="{10 + 11 * i}" text-anchor="{anchor}">'
            f"{name} {_ms(value)} ms</text>"
        )
    return "\n".join(out)


def _histogram(measure: str, buckets: Sequence[tuple[float, int]], pct: Percentiles | None) -> str:
    bars = _bars(buckets)
    if not bars or not any(n for _, _, n in bars):
        return _empty(f"No samples for {measure}.")
    x_ticks = _log_ticks(bars[0][0], bars[-1][1])
    y_ticks = _ticks_covering(max(n for _, _, n in bars))
    frame = _Frame(x_ticks[0], x_ticks[-1], y_ticks[-1], SMALL, log_x=True)
    rects = []
    for lower, upper, n in bars:
        if n:
            x0, x1, y = frame.x(lower), frame.x(upper), frame.y(n)
            rects.append(
                f'<rect class="bar" x="{_f(x0)}" y="{_f(y)}" width="{_f(max(x1 - x0, 1.0))}" '
                f'height="{_f(frame.bottom - y)}"/>'
            )
    body = [
        _axes(frame, x_ticks, y_ticks, "latency, ms (log scale)", "count"),
        "\n".join(rects),
        _markers(frame, pct),
    ]
    return _svg(f"Histogram of {measure} latency", body, frame.size)


def _histograms(result: Result) -> str:
    if not result.histograms:
        return _empty("No histograms were recorded.")
    figures = [
        _figure(m, _histogram(m, result.histograms[m], result.totals.latency.get(m)))
        for m in _ordered(result.histograms, MEASURES)
    ]
    return '<div class="grid2">\n' + "\n".join(figures) + "\n</div>"


# Server -----------------------------------------------------------------------------------


def _cpu_percent(samples: Sequence[ServerSample]) -> list[Point]:
    """CPU as % of one core between consecutive samples; a counter that goes back (a
    restarted server) or a missing reading breaks the line."""
    points: list[Point] = []
    prev: ServerSample | None = None
    for s in sorted(samples, key=lambda s: s.t_s):
        if s.cpu_seconds is None:
            points.append((s.t_s, None))
            continue
        if prev is not None and prev.cpu_seconds is not None and s.t_s > prev.t_s:
            used = s.cpu_seconds - prev.cpu_seconds
            points.append((s.t_s, 100.0 * used / (s.t_s - prev.t_s) if used >= 0 else None))
        prev = s
    return points


def _server(result: Result) -> str:
    if not result.server:
        return _empty("No server samples: the server's /metrics was not read during this run.")
    samples = sorted(result.server, key=lambda s: s.t_s)
    rss = [(s.t_s, None if s.rss_bytes is None else s.rss_bytes / MIB) for s in samples]
    x_hi, marks = _x_extent(result), _marks(result)
    rss_series = [_Series("RSS", "c0", rss)]
    memory = _line_chart("Server RSS", rss_series, x_hi, "MiB", marks, SMALL)
    cpu_series = [_Series("CPU", "c1", _cpu_percent(samples))]
    cpu = _line_chart("Server CPU", cpu_series, x_hi, "% of one core", marks, SMALL)
    figures = _figure("Resident memory (MiB)", memory) + "\n" + _figure("CPU (% of one core)", cpu)
    return f'<div class="grid2">\n{figures}\n</div>'


# A site's page views ----------------------------------------------------------------------


def _site_rows(runs: Sequence[tuple[str, SiteFigures]]) -> list[Row]:
    rows: list[Row] = []
    for label, site in runs:
        wait = [DASH if v is None else _ms(v) for v in (site.wait_p50_ms, site.wait_p95_ms)]
        cells = [
            _e(label),
            _count(site.page_views),
            _count(site.mints),
            _count(site.peak_held),
            DASH if site.mean_held is None else _rate(site.mean_held),
            _count(site.peak_waiting),
            _count(site.chatting),
            _count(site.waited),
            *wait,
            f'<span class="bad">{_count(site.refused)}</span>' if site.refused else "0",
        ]
        rows.append(("", cells))
    return rows


def _site_body(runs: Sequence[tuple[str, SiteFigures]], x_hi: float) -> str:
    series: list[_Series] = []
    for i, (label, site) in enumerate(runs):
        prefix = f"{label}: " if len(runs) > 1 else ""
        held = [(s.t_s, None if s.held is None else float(s.held)) for s in site.samples]
        waiting = [(s.t_s, None if s.waiting is None else float(s.waiting)) for s in site.samples]
        series.append(_Series(f"{prefix}sessions held", f"c{2 * i}", held))
        series.append(_Series(f"{prefix}waiting", f"c{2 * i + 1}", waiting, dashed=True))
    caps = {site.max_sessions for _, site in runs if site.max_sessions is not None}
    if len(caps) == 1:
        cap = float(caps.pop())
        series.append(_Series(f"cap {_num(cap)}", "c5", [(0.0, cap), (x_hi, cap)], dashed=True))
    chart = _line_chart("Sessions held and waiting", series, x_hi, "sessions")
    figure = _figure(
        "The deployment's slots held and its waiting room's length, sampled every second "
        "(GET /api/sessions)",
        chart,
    )
    head = [
        "run", "page views", "mints", "peak held", "mean held", "peak waiting",
        "chatting", "waited", "wait p50 ms", "wait p95 ms", "refused",
    ]  # fmt: skip
    note = (
        '<p class="note">Chatting visitors\' wait runs from their first message to '
        "<code>session.ready</code>; waited counts those whose first message found no session "
        "and waited in the waiting room; refused, those who got none.</p>"
    )
    return figure + "\n" + note + "\n" + _table(head, [_site_rows(runs)], numeric_from=1)


def _site(result: Result) -> str:
    if result.site is None:
        return ""
    return _section(
        "A site's page views", _site_body([(result.site.start, result.site)], _x_extent(result))
    )


def render_sites(results: Sequence[Result]) -> str:
    """One page comparing site-like runs (say, first-message against autostart): their
    curves on one chart, their figures in one table, each run's command."""
    runs = [(r.site.start, r.site) for r in results if r.site is not None]
    x_hi = max((_x_extent(r) for r in results), default=1.0)
    commands = "\n".join(f"<pre><code>{_e(r.command)}</code></pre>" for r in results)
    title = "rapport loadtest: a site's page views"
    return "\n".join(
        [
            '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>",
            f"<body>\n<main>\n<h1>{_e(title)}</h1>",
            commands,
            _site_body(runs, x_hi),
            "</main>\n</body>\n</html>\n",
        ]
    )
