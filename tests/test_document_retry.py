"""A failed document is retried (issue 23, Knowledge page: "failed documents with their error
and a retry"): queued again as a new generation, from the content the failure kept. Against a
real ``rapport serve`` and its worker."""

from __future__ import annotations

import asyncio

import httpx

from engine.accounts import AccountStore
from engine.audit import AuditLog, AuditQuery
from tests.conftest import Server, wait_until
from tests.test_knowledge import doc_path, state_of, unique, wait_ready


def retry(client: httpx.Client, external_id: str) -> httpx.Response:
    return client.post(f"{doc_path(external_id)}/retry")


def audited(server: Server, account: str) -> list[tuple[str, str, str]]:
    """The account's audit entries: actor, action, target."""

    async def read() -> list[tuple[str, str, str]]:
        state = state_of(server)
        try:
            account_id = (await AccountStore(state).resolve(account)).id
            page = await AuditLog(state).page(account_id, AuditQuery(limit=200))
        finally:
            await state.aclose()
        return [(e.actor, e.action, e.target) for e in page.items]

    return asyncio.run(read())


def test_a_failed_document_runs_again_and_only_a_failed_one(server: Server) -> None:
    name = unique("retry")
    key = server.new_tenant(name)
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        assert client.put(doc_path("blank"), json={"content": "  \n  "}).status_code == 201
        assert client.put(doc_path("fine"), json={"content": "We open at nine."}).is_success
        failed = wait_ready(client, "blank")
        assert failed["processing_status"] == "failed", failed
        assert wait_ready(client, "fine")["processing_status"] == "ready"

        queued = retry(client, "blank")
        assert queued.status_code == 200, queued.text
        shown = queued.json()
        assert (shown["processing_status"], shown["error_message"]) == ("pending", None)
        assert shown["processed_at"] is None
        # It ran again, on the content its failure kept, and failed the same way (not for a
        # content gone missing).
        wait_until(
            lambda: client.get(doc_path("blank")).json()["processing_status"] == "failed",
            60,
            "the retried document to be processed",
        )
        again = client.get(doc_path("blank")).json()
        assert again["error_message"] == failed["error_message"]
        assert again["processed_at"] > failed["processed_at"]

        for external_id, status, code in (
            ("fine", 409, "resource.conflict"),
            ("nothing-here", 404, "resource.not_found"),
        ):
            refused = retry(client, external_id)
            assert refused.status_code == status, refused.text
            assert refused.json()["code"] == code
        assert client.get(doc_path("fine")).json()["processing_status"] == "ready"
    assert audited(server, name).count(("key:primary", "document.retried", "blank")) == 1


def test_a_document_that_ran_out_of_time_is_ready_when_retried(server_on) -> None:
    server = server_on(RAPPORT_KB_DOCUMENT_SECONDS="0.000001")
    key = server.new_tenant("slow")
    text = {"content": "Parcels leave the depot at noon every weekday."}
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        assert client.put(doc_path("parcels"), json=text).status_code == 201
        failed = wait_ready(client, "parcels")
    assert failed["processing_status"] == "failed", failed
    assert "RAPPORT_KB_DOCUMENT_SECONDS" in failed["error_message"]
    # The operator gives documents more time; the failed one is retried, not uploaded again.
    server.stop()
    server.env["RAPPORT_KB_DOCUMENT_SECONDS"] = "300"
    server.start()
    with server.client(headers={"X-Api-Key": key}, timeout=30) as client:
        assert retry(client, "parcels").status_code == 200
        ready = wait_ready(client, "parcels")
    assert ready["processing_status"] == "ready", ready["error_message"]
    assert ready["error_message"] is None and ready["knowledge_units"] >= 1
