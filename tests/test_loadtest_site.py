"""``rapport loadtest ws --page-views``: a site's page views against a real ``rapport serve``
with a deployment cap of 5, started on the first message and with autostart (issue 24)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest import load
from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server, llm_env

ROOT = Path(__file__).resolve().parent.parent
CAP = 5
VIEWS = 20
CHATTING = 5  # 25 % of VIEWS, spread evenly


def site_run(server: Server, out: Path, start: str) -> None:
    # Short visits, and a settle of a second: what is checked is what was minted and held
    # while the views came, not how long the server then took to free every slot.
    done = subprocess.run(
        [
            sys.executable, "-m", "api.cli", "loadtest", "ws", "--url", server.base_url,
            "--key", server.demo_key, "--out", str(out), "--quiet", "--page-views", str(VIEWS),
            "--views-per-second", "20", "--chat-share", "0.25", "--start", start,
            "--dwell-seconds", "0.2-0.6", "--think-seconds", "0.1-0.2", "--messages", "1",
            "--settle", "1", "--drain", "5", "--seed", "7",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_autostart_mints_every_page_view_and_first_message_only_the_chats(
    server_on, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    server = server_on(
        **llm_env(fake_llm),
        RAPPORT_MAX_SESSIONS=str(CAP),
        # Scaled down: a closed tab's session, an unused offer and a gone queued client
        # each free their slot or place within seconds.
        RAPPORT_SESSION_RESUME_SECONDS="1",
        RAPPORT_SESSION_CONNECT_SECONDS="2",
        RAPPORT_QUEUE_IDLE_SECONDS="3",
    )
    # The deployment's cap must be what binds, not the account's plan (10).
    planned = server.cli_in_process(
        "accounts", "plan", "--account", "demo", "--max-concurrent-sessions", "1000"
    )
    assert planned.returncode == 0, planned.stderr

    site_run(server, tmp_path / "first", "first-message")
    first = load(tmp_path / "first" / "result.json")
    assert first.site is not None
    assert first.site.start == "first-message"
    assert first.site.page_views == VIEWS
    assert first.site.chatting == CHATTING
    assert first.site.mints == CHATTING
    assert first.site.refused == 0
    assert first.totals.outcomes["page view"] == VIEWS
    assert first.totals.outcomes["reply completed"] == CHATTING
    assert first.totals.latency["chat_wait"].count == CHATTING
    assert first.site.samples and first.site.max_sessions == CAP
    assert 0 < first.site.peak_held <= CAP

    site_run(server, tmp_path / "auto", "autostart")
    auto = load(tmp_path / "auto" / "result.json")
    assert auto.site is not None
    assert auto.site.start == "autostart"
    assert auto.site.page_views == VIEWS
    assert auto.site.chatting == CHATTING
    assert auto.site.mints == VIEWS
    assert auto.site.samples
    assert 0 < auto.site.peak_held <= CAP
    # Twenty pages minting within a second against five slots: the line forms.
    assert auto.site.peak_waiting > 0
    report = (tmp_path / "auto" / "report.html").read_text()
    assert "A site&#x27;s page views" in report and "sessions held" in report
