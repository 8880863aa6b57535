"""``report.html`` from a synthetic result: it parses and balances, draws its charts, shows
every outcome, percentile and rate, escapes what came from the user, points nowhere
outside itself, survives empty data, and renders the same bytes for the same result."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest

from loadtest.report import _cpu_percent, render
from loadtest.result import (
    Percentiles,
    Phase,
    Result,
    ServerSample,
    Stage,
    Tick,
    load,
    save,
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
OUTCOMES_WARM = {"200": 270, "429 limits.rate_exceeded": 3}
OUTCOMES_PEAK = {
    "200": 1180,
    "429 limits.rate_exceeded": 41,
    "503 queue_unavailable": 17,
    "504 upstream_timeout": 9,
    "transport ConnectError": 2,
}


class Page(HTMLParser):
    """Collects tags, attributes and table rows, and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.mismatches: list[str] = []
        self.rows: list[tuple[str | None, list[str]]] = []
        self.cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in ("td", "th"):
            self.cell = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.mismatches.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1][1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.starts if tag == name]


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


def pct(base: float, count: int = 1500) -> Percentiles:
    return Percentiles(
        count=count,
        mean=base * 1.4,
        p50=base,
        p90=base * 2 + 0.25,
        p99=base * 6 + 6.75,
        p999=base * 12 + 0.5,
        max=base * 33 + 0.75,
    )


def phase(name: str, start: float, end: float, outcomes: dict[str, int], base: float) -> Phase:
    sent = sum(outcomes.values())
    return Phase(
        name=name,
        started_s=start,
        ended_s=end,
        offered_rate=sent / (end - start) + 0.5,
        achieved_rate=sent / (end - start),
        sent=sent,
        completed=sent,
        dropped=0 if name == "warm-up" else 12,
        latency={"request": pct(base), "reply": pct(base * 20, count=300)},
        outcomes=outcomes,
        breakdown={"llm_first_token_ms": pct(base * 10), "retrieval_ms": pct(base / 2)},
    )


def make_result(interrupted: bool = False) -> Result:
    warm = phase("warm-up", 0.0, 15.0, OUTCOMES_WARM, 12.5)
    peak = phase("peak", 15.0, 30.0, OUTCOMES_PEAK, 25.0)
    totals_outcomes = {k: OUTCOMES_WARM.get(k, 0) + OUTCOMES_PEAK.get(k, 0) for k in OUTCOMES_PEAK}
    totals = phase("whole run", 0.0, 30.0, totals_outcomes, 20.0)
    timeline = [
        Tick(
            t_s=float(t),
            started=20 + 3 * t,
            completed=19 + 3 * t,
            errors=0 if t < 15 else t - 14,
            p50_ms=None if t == 7 else 10.0 + t,
            p99_ms=None if t == 7 else 40.0 + 4 * t,
        )
        for t in range(1, 31)
    ]
    server = [
        ServerSample(t_s=float(t), rss_bytes=(300 + 2 * t) * 1024 * 1024, cpu_seconds=0.5 * t)
        for t in range(0, 31, 2)
    ]
    histograms = {
        "request": [(2.0**i / 8, 5 * i * (12 - i)) for i in range(1, 12)],
        "reply": [(250.0 * 1.25**i, 30 - 2 * i) for i in range(14)],
    }
    return Result(
        command="rapport loadtest http --rate 100 --tag '<script>alert(1)</script>'",
        target="http://127.0.0.1:8000",
        scenario="conversation & turns",
        mode="open",
        started_at="2025-05-01T12:00:00Z",
        duration_s=30.0,
        stages=[Stage(duration_s=15.0, target=20.0), Stage(duration_s=15.0, target=85.0)],
        phases=[warm, peak],
        totals=totals,
        timeline=timeline,
        server=server,
        histograms=histograms,
        interrupted=interrupted,
    )


def ms(value: float) -> str:
    return f"{value:,.2f}" if value < 100 else f"{value:,.1f}"


def assert_well_formed(document: str) -> Page:
    assert document.startswith('<!doctype html>\n<html lang="en">')
    page = parse(document)
    assert page.mismatches == []
    assert page.stack == []
    assert len(page.tags("html")) == len(page.tags("head")) == len(page.tags("body")) == 1
    assert page.tags("meta")[0] == {"charset": "utf-8"}
    return page


def test_the_report_parses_balances_and_draws_its_charts() -> None:
    page = assert_well_formed(render(make_result()))
    # latency, throughput, two histograms, RSS, CPU
    assert len(page.tags("svg")) == 6
    assert all(s.get("viewbox") and s.get("role") == "img" for s in page.tags("svg"))
    assert len(page.tags("polyline")) >= 5
    assert len(page.tags("rect")) >= 10
    assert page.tags("style") and not page.tags("script")


def test_every_outcome_is_counted_apart_and_failures_are_highlighted() -> None:
    page = parse(render(make_result()))
    by_label = {cells[0]: (cls, cells) for cls, cells in page.rows if cells}
    for label, n in OUTCOMES_PEAK.items():
        cls, cells = by_label[label]
        warm, peak, whole = OUTCOMES_WARM.get(label, 0), n, OUTCOMES_WARM.get(label, 0) + n
        assert cells[1:4] == [f"{warm:,}", f"{peak:,}", f"{whole:,}"]
        assert cls == (None if label == "200" else "bad")
    assert by_label["all outcomes"][1][1:4] == ["273", "1,249", "1,522"]


def test_percentiles_per_phase_and_measure_and_breakdown() -> None:
    result = make_result()
    page = parse(render(result))
    rows = [cells for _, cells in page.rows]
    for name, p in [("warm-up", result.phases[0]), ("peak", result.phases[1])]:
        for source in (p.latency, p.breakdown):
            for measure, q in source.items():
                values = [ms(v) for v in (q.p50, q.p90, q.p99, q.p999, q.max)]
                assert [measure, name, f"{q.count:,}", *values] in rows
    assert ["request", "whole run", "1,500", "20.00", "40.25", "126.8", "240.5", "660.8"] in rows
    assert ["reply", "peak", "300", "500.0", "1,000.2", "3,006.8", "6,000.5", "16,500.8"] in rows


def test_rates_table_shows_offered_achieved_and_dropped() -> None:
    page = parse(render(make_result()))
    rows = [cells for _, cells in page.rows]
    assert ["warm-up", "0\u201315 s", "18.7", "18.2", "273", "273", "0"] in rows
    assert ["peak", "15\u201330 s", "83.8", "83.3", "1,249", "1,249", "12"] in rows
    assert ["whole run", "0\u201330 s", "51.2", "50.7", "1,522", "1,522", "12"] in rows


def test_header_shows_the_run_and_escapes_user_strings() -> None:
    result = make_result()
    result.phases[1].name = "peak <i>&</i>"
    result.phases[1].outcomes["close 4005 <b>"] = 4
    document = render(result)
    page = assert_well_formed(document)
    assert not page.tags("script") and "<script" not in document
    assert not page.tags("i") and not page.tags("b")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "peak &lt;i&gt;&amp;&lt;/i&gt;" in document
    assert "close 4005 &lt;b&gt;" in document
    assert "<pre><code>rapport loadtest http --rate 100 --tag &#x27;&lt;script&gt;" in document
    text = "".join(page.text)
    for shown in ("rapport loadtest", "http://127.0.0.1:8000", "conversation & turns", "open loop"):
        assert shown in text
    assert "2025-05-01T12:00:00Z" in text and "30 s" in text
    assert "15 s to 20/s, then 15 s to 85/s" in text


def test_nothing_is_loaded_from_elsewhere() -> None:
    document = render(make_result())
    page = parse(document)
    for _, attrs in page.starts:
        for name in ("src", "href", "xlink:href", "action"):
            assert not (attrs.get(name) or "").lower().startswith(("http:", "https:", "//"))
    assert not page.tags("link") and not page.tags("img") and not page.tags("script")
    style = document[document.index("<style>") : document.index("</style>")]
    assert "url(" not in style and "@import" not in style and "@font-face" not in style


@pytest.mark.parametrize("interrupted", [False, True])
def test_the_banner_shows_only_when_interrupted(interrupted: bool) -> None:
    document = render(make_result(interrupted=interrupted))
    assert ("Stopped early: figures cover what ran." in document) is interrupted
    assert ('class="banner"' in document) is interrupted


@pytest.mark.parametrize(
    "changes",
    [
        {"timeline": []},
        {"server": []},
        {"histograms": {}},
        {"histograms": {"request": []}, "server": [ServerSample(1.0, None, None)]},
        {"timeline": [], "server": [], "histograms": {}, "phases": [], "stages": []},
    ],
)
def test_empty_data_renders(changes: dict[str, object]) -> None:
    result = msgspec.structs.replace(make_result(), **changes)
    page = assert_well_formed(render(result))
    assert page.tags("table")


def test_an_empty_run_renders() -> None:
    nothing = Phase(
        name="whole run",
        started_s=0.0,
        ended_s=0.0,
        offered_rate=0.0,
        achieved_rate=0.0,
        sent=0,
        completed=0,
        dropped=0,
        latency={},
        outcomes={},
        breakdown={},
    )
    result = Result(
        command="rapport loadtest ws",
        target="http://localhost",
        scenario="live",
        mode="closed",
        started_at="2025-05-01T12:00:00Z",
        duration_s=0.0,
        stages=[],
        phases=[],
        totals=nothing,
        timeline=[],
        server=[],
        histograms={},
        interrupted=True,
    )
    document = render(result)
    page = assert_well_formed(document)
    assert not page.tags("svg")
    assert "No outcomes were recorded." in document
    assert "No server samples" in document


def test_render_is_deterministic_and_survives_a_round_trip(tmp_path: Path) -> None:
    result = make_result()
    first = render(result)
    assert render(result) == first
    assert render(make_result()) == first
    path = tmp_path / "result.json"
    save(result, path)
    assert render(load(path)) == first
    # As the README calls it: with the path as a string too (issue 26).
    assert load(str(path)) == result


def test_cpu_is_a_share_of_one_core_between_samples() -> None:
    samples = [
        ServerSample(0.0, None, 10.0),
        ServerSample(2.0, None, 11.0),
        ServerSample(4.0, None, 13.0),
        ServerSample(5.0, None, None),
        ServerSample(6.0, None, 1.0),
        ServerSample(8.0, None, 1.5),
    ]
    assert _cpu_percent(samples) == [
        (2.0, 50.0),
        (4.0, 100.0),
        (5.0, None),
        (6.0, None),
        (8.0, 25.0),
    ]
