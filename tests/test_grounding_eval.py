"""Honesty and retrieval over every evaluation set (issues 15 and 25): each set of
``bench/evalsets.py`` (the Python, SQLite and Perl FAQs, the Git User Manual's how-do-I
sections, a games package catalogue; ``make test`` installs their Debian packages) loaded
into its own account on a real server, and every question and off-topic question of every
set asked once through ``POST /api/v1/conversation`` with the embedded responder.

- An off-topic question gets no source.
- No reply holds a number, URL, date or name that is not in the question, a cited document
  (its text or label), the topics the persona covers, or the persona itself.
- A reply cites at most three documents, each of them active.
- The reply's first source is the answering document at least as often as BENCHMARKS.md
  records for the set (``bench/tuning.py``), less 3 points: the model, the data and the
  pipeline are deterministic, so a drop is a change to retrieval or replies.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from bench import evalsets
from tests.conftest import Server
from tests.test_replies_like_a_person import invented

READY_TIMEOUT_S = 600
REGRESSION_MARGIN = 0.03
BENCHMARKS = Path(__file__).parent.parent / "BENCHMARKS.md"
OUT_OF_SAMPLE = "### Leave-one-set-out choice"
"""The BENCHMARKS.md section whose table holds each set's out-of-sample first source."""

Asked = dict[str, tuple[dict, list[tuple[str, dict]]]]
"""Set name -> its account's persona, and (question, reply) for its questions, then its
off-topic questions."""


def recorded_first_source(name: str) -> float:
    """The defaults' first-source figure for the set in the leave-one-set-out table (its
    third cell; the out-of-sample figure beside it is the same on every set but the Python
    FAQ's, where the defaults' is higher, so the test holds the stricter)."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    section = text[text.index(OUT_OF_SAMPLE) :]
    row = re.search(rf"^\| {re.escape(name)} \| [^|]+ \| (\d\.\d+) \|", section, re.M)
    assert row is not None, f"BENCHMARKS.md has no leave-one-set-out row for {name}"
    return float(row.group(1))


@pytest.fixture(scope="module")
def sets() -> dict[str, evalsets.EvalSet]:
    return {name: load() for name, load in evalsets.SETS.items()}


@pytest.fixture(scope="module")
def asked(server: Server, sets: dict[str, evalsets.EvalSet]) -> Asked:
    """Every set in an account of its own, processed together, then every question asked."""
    clients: dict[str, httpx.Client] = {}
    for name, evalset in sets.items():
        key = server.new_tenant(f"eval-{name}")
        added = server.cli("balance", "add", "--account", f"eval-{name}", "2000")
        assert added.returncode == 0, added.stderr
        client = clients[name] = server.client(timeout=60, headers={"X-Api-Key": key})
        entries = evalset.entries
        for start in range(0, len(entries), 100):
            items = [
                {"external_id": e.external_id, "content": e.answer, "label": e.label}
                for e in entries[start : start + 100]
            ]
            assert client.put("/api/knowledge/docs", json={"items": items}).status_code == 200
        assert client.post("/api/knowledge/docs/process").status_code == 200
    deadline = time.monotonic() + READY_TIMEOUT_S
    for name, client in clients.items():
        while True:
            ready = client.get("/api/knowledge/docs", params={"status": "ready", "limit": 1})
            if ready.json()["total_count"] == len(sets[name].entries):
                break
            assert time.monotonic() < deadline, f"{name} was not processed in time"
            time.sleep(0.25)
    out: Asked = {}
    for name, client in clients.items():
        persona = client.get("/api/personas/default").json()
        wanted = {"external_ids": [e.external_id for e in sets[name].entries]}
        activated = client.put(f"/api/personas/{persona['id']}/knowledge", json=wanted)
        assert activated.status_code == 200
        questions = [e.question for e in sets[name].entries] + list(sets[name].off_topic)
        out[name] = persona, [(q, ask(client, f"eval-{n}", q)) for n, q in enumerate(questions)]
        client.close()
    return out


def ask(client: httpx.Client, user: str, message: str) -> dict:
    response = client.post("/api/v1/conversation", json={"user_id": user, "message": message})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", list(evalsets.SETS))
def test_off_topic_questions_get_no_source(
    name: str, sets: dict[str, evalsets.EvalSet], asked: Asked
) -> None:
    off_topic = asked[name][1][len(sets[name].entries) :]
    assert {q: r["sources"] for q, r in off_topic if r["sources"]} == {}


@pytest.mark.parametrize("name", list(evalsets.SETS))
def test_no_reply_invents_a_number_url_date_or_name(
    name: str, sets: dict[str, evalsets.EvalSet], asked: Asked
) -> None:
    entries = sets[name].entries
    documents = {e.external_id: f"{e.label}\n{e.answer}" for e in entries}
    topics = sorted({e.title for e in entries})  # the labels less their running numbers
    persona, replies = asked[name]
    found: dict[str, list[str]] = {}
    for question, reply in replies:
        assert len(reply["sources"]) <= 3
        assert set(reply["sources"]) <= set(documents)
        allowed = [question, persona["name"], persona.get("role") or "", *topics]
        allowed += [documents[s] for s in reply["sources"]]
        if made_up := invented(reply["reply"], allowed):
            found[question] = made_up
    assert found == {}


@pytest.mark.parametrize("name", list(evalsets.SETS))
def test_first_source_holds_the_figure_benchmarks_records(
    name: str, sets: dict[str, evalsets.EvalSet], asked: Asked
) -> None:
    entries = sets[name].entries
    replies = asked[name][1][: len(entries)]
    first = sum(
        bool(r["sources"]) and r["sources"][0] == e.external_id
        for e, (_, r) in zip(entries, replies, strict=True)
    ) / len(entries)
    assert first >= recorded_first_source(name) - REGRESSION_MARGIN


def test_the_issues_own_examples_through_the_whole_pipeline(server: Server) -> None:
    # Issue 15 tried these on the embedded default and got the no-answer or glued templates.
    key = server.new_tenant("returns-shop")
    with server.client(timeout=60, headers={"X-Api-Key": key}) as client:
        body = {
            "content": "Items can be returned within 30 days. Returned items must be unused.",
            "label": "Returns",
        }
        put = client.put("/api/knowledge/docs/by-external-id/returns", json=body)
        assert put.status_code == 201
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (
            client.get("/api/knowledge/docs/by-external-id/returns").json()["processing_status"]
            != "ready"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        persona = client.get("/api/personas/default").json()
        active = {"external_ids": ["returns"]}
        assert (
            client.put(f"/api/personas/{persona['id']}/knowledge", json=active).status_code == 200
        )

        hello = ask(client, "ana", "Hi there")
        assert hello["sources"] == [] and "don't have information" not in hello["reply"]
        mixed = ask(client, "ana", "My name is Ana. Can I return shoes I wore once?")
        quoted = ("Items can be returned within 30 days.", "Returned items must be unused.")
        assert "Ana" in mixed["reply"] and any(q in mixed["reply"] for q in quoted)
        assert mixed["sources"] == ["returns"]
        assert ask(client, "ana", "What's my name?")["reply"].count("Ana") == 1
        off = ask(client, "ana", "Who won the football World Cup in 2014?")
        assert off["sources"] == [] and "Returns" in off["reply"]  # names what it covers
